"""The command line every benchmark shares: its own sizes, and --quick to prove it still runs."""

from __future__ import annotations

import argparse
from typing import Any

QUICK_HELP = "small sizes, a few seconds: proves the benchmark runs (CI); its figures mean little"


def parse(parser: argparse.ArgumentParser, **quick: Any) -> argparse.Namespace:
    """The arguments; under --quick, each option named in ``quick`` that was left at its
    default takes the small value given there (one given on the command line is kept)."""
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    args = parser.parse_args()
    if args.quick:
        for name, small in quick.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, small)
    return args


def benchmark(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's parser, described by the first line of its docstring."""
    return argparse.ArgumentParser(description=(doc or "").splitlines()[0])
