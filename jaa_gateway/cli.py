"""Command line: run · check-config · demo · device · door."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jaa_gateway.config import ConfigError, load_config, summary


def _check_config(path: str) -> int:
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        count = len(exc.problems)
        print(f"{path}: {count} problem{'' if count == 1 else 's'}", file=sys.stderr)
        return 1
    print(f"{path}: OK")
    print(summary(cfg))
    return 0


def _run(path: str) -> int:
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 1
    from jaa_gateway.app import run_daemon

    return run_daemon(cfg, config_path=path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaa-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run the daemon in the foreground")
    p_run.add_argument("--config", required=True, help="path to the TOML config")
    p_check = sub.add_parser("check-config", help="validate a config file")
    p_check.add_argument("path")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.path)
    if args.command == "run":
        return _run(args.config)
    return 2


if __name__ == "__main__":
    sys.exit(main())
