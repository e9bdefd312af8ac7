"""The command line: ``monitor check``, ``monitor config``; exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from loguru import logger

from monitor import __version__
from monitor.checks import run_check
from monitor.http import Fetcher
from monitor.logs import configure_logging
from monitor.recording import log_result
from monitor.settings import ConfigError, Monitor, Settings, load_settings, render_config
from monitor.supervisor import run_daemon
from monitor.systemd import take_notifier

EXIT_OK = 0
EXIT_DOWN = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h; the systemd unit does not restart on it
CHECK_CONCURRENCY = 32


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--env-file",
        type=Path,
        default=argparse.SUPPRESS,
        help="read settings from this file instead of ./settings.env (also MONITOR_ENV_FILE)",
    )
    parser = argparse.ArgumentParser(
        prog="monitor", description="HTTP availability monitor.", parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"monitor {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "run", parents=[common], help="run the daemon in the foreground (systemd runs this)"
    )
    check = commands.add_parser(
        "check",
        parents=[common],
        help="check each (or each named) monitor once; exit 0 if all are up, 1 if any is down",
    )
    check.add_argument("names", nargs="*", metavar="NAME", help="monitors to check (default: all)")
    commands.add_parser(
        "config", parents=[common], help="validate and print the effective configuration"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(
            environ=os.environ, cwd=Path.cwd(), env_file=getattr(args, "env_file", None)
        )
    except ConfigError as error:
        for problem in error.problems:
            print(f"monitor: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "config":
        sys.stdout.write(render_config(settings))
        return EXIT_OK
    if args.command == "run":
        # Taken out of os.environ before any worker is spawned: workers must not inherit them.
        notifier = take_notifier(os.environ, os.getpid())
        try:
            return run_daemon(
                settings,
                environ=dict(os.environ),
                env_file=getattr(args, "env_file", None),
                notifier=notifier,
            )
        finally:
            notifier.close()
    return check_monitors(settings, args.names)


def select_monitors(settings: Settings, names: Sequence[str]) -> list[Monitor]:
    """The monitors named (case-insensitively), or all; ValueError naming any that are unknown."""
    if not names:
        return list(settings.monitors.values())
    wanted = [name.lower() for name in names]
    unknown = [name for name in wanted if name not in settings.monitors]
    if unknown:
        known = ", ".join(sorted(settings.monitors))
        raise ValueError(f"unknown monitor {', '.join(unknown)}; configured: {known}")
    return [settings.monitors[name] for name in dict.fromkeys(wanted)]


def check_monitors(settings: Settings, names: Sequence[str]) -> int:
    """``monitor check``: one line per monitor on stdout as each finishes; other records on
    stderr. Checks run concurrently, at most CHECK_CONCURRENCY at a time."""
    configure_logging(
        level=settings.log_level,
        json=settings.log_json,
        stream=sys.stderr,
        check_stream=sys.stdout,
    )
    try:
        monitors = select_monitors(settings, names)
    except ValueError as error:
        print(f"monitor: {error}", file=sys.stderr)
        return EXIT_USAGE
    for warning in settings.warnings():
        logger.warning(warning)
    fetcher = Fetcher()
    all_up = True
    try:
        with ThreadPoolExecutor(min(CHECK_CONCURRENCY, len(monitors))) as pool:
            futures = [pool.submit(run_check, monitor, fetcher) for monitor in monitors]
            for future in as_completed(futures):
                result = future.result()
                log_result(result)
                all_up = all_up and result.ok
    finally:
        fetcher.close()
    return EXIT_OK if all_up else EXIT_DOWN
