"""The ``fastmeta`` command line: ``fastmeta demo`` (meta-RL, or ``--sl``), ``profile`` and ``bound``.

Each subcommand lives in its own module with ``add_parser(subparsers)`` (registers the
subcommand and its options), ``run(args)`` (returns an exit status, or anything else for
0) and optionally ``check(args, parser)``
(checks between options, calling ``parser.error``). Every option is validated while it
is parsed, so bad values end in a usage error (exit status 2) naming the option, before
any work. To add a subcommand, add its module to ``SUBCOMMANDS``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..theory import command as bound
from . import demo, profile
from .demo import run_rl_demo
from .profile import run_profile

SUBCOMMANDS = (demo, profile, bound)
"""Modules providing ``add_parser(subparsers)``; the order is the order in ``--help``."""

__all__ = ["build_parser", "main", "run_profile", "run_rl_demo"]


def build_parser() -> argparse.ArgumentParser:
    """The ``fastmeta`` argument parser with every subcommand registered."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="fastmeta",
        description="Exact, fast model-agnostic meta-learning (MAML) for tabular RL and supervised learning. "
                    "Run 'fastmeta demo' for a first look and 'fastmeta COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"fastmeta {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        known = set(sub.choices)
        module.add_parser(sub)
        for name in set(sub.choices) - known:
            sub.choices[name].set_defaults(parser=sub.choices[name], run=module.run,
                                           check=getattr(module, "check", None))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), check the options, run the subcommand."""
    args = build_parser().parse_args(argv)
    check = getattr(args, "check", None)
    if check is not None:
        check(args, args.parser)
    status = args.run(args)
    return status if isinstance(status, int) else 0   # a subcommand may return its report


if __name__ == "__main__":
    sys.exit(main())
