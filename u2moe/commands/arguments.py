"""Argument types shared by the subcommands: a bad value is refused while parsing, before
any work starts, as `u2moe <command>: error: argument --x: ...` (exit status 2)."""

import argparse
from pathlib import Path


def positive_int(text: str) -> int:
    """An int >= 1 (threads, workers, batch sizes, counts)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An int >= 0 (counts where 0 means none or all)."""
    return _int_at_least(text, 0)


def positive_float(text: str) -> float:
    """A finite float > 0 (hours, seconds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def output_dir(text: str) -> Path:
    """A directory to write into: existing, or creatable (no file in the way)."""
    path = Path(text)
    for place in (path, *path.parents):
        if place.exists():
            if not place.is_dir():
                raise argparse.ArgumentTypeError(f"{place} is a file, not a directory")
            break
    return path


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value
