"""argparse `type=` checks for numeric flags: a value out of range is a one-line usage error, not a traceback later."""

from __future__ import annotations

import argparse


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None


def positive_int(text: str) -> int:
    """An integer >= 1 (counts and sizes: --limit, --batch-size, --steps)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (where 0 means off or default: --tta-shift, --threads)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def fraction(text: str) -> float:
    """A number in (0, 1] (an accuracy target)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not 0 < value <= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {text}")
    return value
