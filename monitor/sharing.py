"""Sharing monitors out among worker slots, balanced by checks per second.

Pure functions of names and rates (checks per second, 1/interval), so they are deterministic and
tested with tables. A slot's load is the sum of its monitors' rates: a monitor checked every
second weighs as much as sixty checked every minute.

On reload the shares are sticky: a monitor that still exists stays in its slot, so a reload
that adds one monitor moves none of the others between processes. Only when the loads drift
apart by more than ``TOLERANCE`` of the mean are monitors moved, each move chosen to even the
two slots out the most.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# A share may carry this much more than the mean load before monitors are moved to even it out.
TOLERANCE = 0.1

Share = tuple[str, ...]


def share_out(
    rates: Mapping[str, float], slots: int, previous: Sequence[Sequence[str]] = ()
) -> list[Share]:
    """Assign every monitor in ``rates`` to one of ``slots`` shares, each sorted by name.

    Monitors already in ``previous[i]`` (for i < slots) stay in share i. The others are placed
    heaviest first, each on the lightest share (longest-processing-time first; ties go to the
    lower name and the lower slot). Then, while the heaviest share exceeds the lightest by more
    than ``TOLERANCE`` of the mean load, the monitor whose move evens those two out the most is
    moved. Deterministic: the same arguments always give the same shares.
    """
    if slots <= 0:
        return []
    shares: list[set[str]] = [set() for _ in range(slots)]
    placed: set[str] = set()
    for index, names in enumerate(previous[:slots]):
        for name in names:
            if name in rates and name not in placed:
                shares[index].add(name)
                placed.add(name)
    loads = [sum(rates[name] for name in share) for share in shares]
    newcomers = sorted((name for name in rates if name not in placed), key=lambda n: (-rates[n], n))
    for name in newcomers:
        lightest = min(range(slots), key=lambda i: (loads[i], i))
        shares[lightest].add(name)
        loads[lightest] += rates[name]
    _even_out(shares, loads, rates)
    return [tuple(sorted(share)) for share in shares]


def _even_out(shares: list[set[str]], loads: list[float], rates: Mapping[str, float]) -> None:
    """Move monitors from the heaviest share to the lightest until they are within tolerance.

    Each move of a monitor with rate r from loads H to L (r < H - L) lowers H² + L², so the
    loop ends; it stops early when no single move narrows the gap.
    """
    mean = sum(loads) / len(loads)
    while True:
        heaviest = max(range(len(loads)), key=lambda i: (loads[i], -i))
        lightest = min(range(len(loads)), key=lambda i: (loads[i], i))
        gap = loads[heaviest] - loads[lightest]
        if gap <= TOLERANCE * mean:
            return
        movable = [name for name in shares[heaviest] if rates[name] < gap]
        if not movable:
            return
        best = min(movable, key=lambda n: (abs(gap - 2 * rates[n]), n))
        shares[heaviest].remove(best)
        shares[lightest].add(best)
        loads[heaviest] -= rates[best]
        loads[lightest] += rates[best]


def share_load(share: Sequence[str], rates: Mapping[str, float]) -> float:
    """A share's load in checks per second."""
    return sum(rates[name] for name in share)
