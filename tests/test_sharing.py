"""Sharing monitors out among workers: balanced by checks per second, deterministic, sticky."""

import random

import pytest

from monitor.sharing import TOLERANCE, share_load, share_out


def loads(shares: list[tuple[str, ...]], rates: dict[str, float]) -> list[float]:
    return [share_load(share, rates) for share in shares]


def test_every_monitor_is_in_exactly_one_share() -> None:
    rates = {f"m{i}": 1.0 / (1 + i % 7) for i in range(100)}
    shares = share_out(rates, 3)
    names = [name for share in shares for name in share]
    assert sorted(names) == sorted(rates)
    assert all(list(share) == sorted(share) for share in shares)


def test_shares_balance_checks_per_second_not_counts() -> None:
    # One monitor checked every second weighs as much as sixty checked every minute.
    rates = {"fast": 1.0, **{f"slow{i:02}": 1 / 60 for i in range(60)}}
    shares = share_out(rates, 2)
    assert ("fast",) in shares
    assert loads(shares, rates) == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("slots", [1, 2, 3, 8])
def test_random_intervals_end_within_tolerance(slots: int) -> None:
    chooser = random.Random(slots)
    rates = {f"m{i}": 1.0 / chooser.choice([1, 5, 10, 30, 60, 300]) for i in range(500)}
    spread = loads(share_out(rates, slots), rates)
    mean = sum(spread) / slots
    assert max(spread) - min(spread) <= TOLERANCE * mean


def test_the_same_input_gives_the_same_shares_whatever_the_order() -> None:
    rates = {f"m{i}": 1.0 / (1 + i % 5) for i in range(50)}
    backwards = dict(reversed(list(rates.items())))
    assert share_out(rates, 4) == share_out(backwards, 4)


def test_adding_a_monitor_moves_no_other() -> None:
    rates = {f"m{i:03}": 0.2 for i in range(100)}
    before = share_out(rates, 3)
    after = share_out({**rates, "new": 0.2}, 3, before)
    for old, new in zip(before, after, strict=True):
        assert set(old) <= set(new)
    assert sum("new" in share for share in after) == 1


def test_removing_monitors_from_one_share_evens_the_shares_out_again() -> None:
    rates = {f"m{i:03}": 0.2 for i in range(90)}
    before = share_out(rates, 3)
    emptied = set(before[0][:20])
    remaining = {name: rate for name, rate in rates.items() if name not in emptied}
    after = share_out(remaining, 3, before)
    spread = loads(after, remaining)
    assert max(spread) - min(spread) <= TOLERANCE * sum(spread) / 3
    moved = sum(len(set(new) - set(old)) for old, new in zip(before, after, strict=True))
    # 70 monitors: the emptied share needs 13 more to reach a third; no more than that moves.
    assert moved <= 14


def test_fewer_slots_place_the_monitors_of_the_slots_that_went() -> None:
    rates = {f"m{i:02}": 1.0 for i in range(12)}
    before = share_out(rates, 3)
    after = share_out(rates, 2, before)
    assert sorted(n for share in after for n in share) == sorted(rates)
    assert loads(after, rates) == [6.0, 6.0]
    assert set(before[0]) <= set(after[0])
    assert set(before[1]) <= set(after[1])


def test_more_slots_than_before_fill_the_new_ones() -> None:
    rates = {f"m{i:02}": 1.0 for i in range(12)}
    after = share_out(rates, 4, share_out(rates, 2))
    assert loads(after, rates) == [3.0, 3.0, 3.0, 3.0]


def test_previous_names_that_no_longer_exist_are_dropped() -> None:
    assert share_out({"a": 1.0}, 1, [("a", "gone")]) == [("a",)]


def test_no_slots_no_shares() -> None:
    assert share_out({"a": 1.0}, 0) == []
