"""Argument types for the command line: every option is checked while it is parsed.

Each factory returns a function for argparse's ``type=``; a bad value raises
``argparse.ArgumentTypeError``, which argparse turns into a usage error (exit status
2) that names the option and says what was expected, before any work starts.
"""
from __future__ import annotations

import argparse
import math
import os
from typing import Callable


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer in [low, high]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"expected an integer {bound}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def real(low: float, high: float, *, low_open: bool = True, high_open: bool = True) -> Callable[[str], float]:
    """A finite float in the interval between ``low`` and ``high`` (open or closed ends)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text!r}") from None
        inside = ((value > low if low_open else value >= low) and (value < high if high_open else value <= high))
        if not math.isfinite(value) or not inside:
            raise argparse.ArgumentTypeError(f"expected a finite number in {interval}, got {text}")
        return value
    parse.__name__ = "real"
    return parse


def output_file(text: str) -> str:
    """A file path that can be written: not a directory, its folder exists and is writable."""
    if text == "":
        raise argparse.ArgumentTypeError("expected a file path, got an empty string")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"expected a file path, got the directory {text!r}")
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"the folder {folder!r} of {text!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"the folder {folder!r} of {text!r} is not writable")
    return text


def optional_output_file(text: str) -> str | None:
    """Like :func:`output_file`, but the empty string means "none"."""
    return None if text == "" else output_file(text)
