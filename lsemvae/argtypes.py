"""argparse ``type=`` validators for numeric options.

A count of -3 or a learning rate of 0 is refused while parsing, so argparse names the flag
("argument --limit: must be a whole number >= 1 (got '-3')") and exits with code 2 before any
work starts. Without them a negative ``--limit`` silently sliced records off the END of a list.
"""

from __future__ import annotations

import argparse
import math


def int_at_least(minimum: int):
    """Whole numbers >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum} (got {text!r})") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum} (got {text!r})")
        return value

    parse.__name__ = f"int>={minimum}"
    return parse


def float_in(low: float, high: float = math.inf, *, low_inclusive: bool = False, high_inclusive: bool = False):
    """Finite numbers in an interval (open at both ends unless told otherwise)."""
    left, right = "[" if low_inclusive else "(", "]" if high_inclusive else ")"
    what = f"a number > {low:g}" if high == math.inf and not low_inclusive else f"a number in {left}{low:g}, {high:g}{right}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what} (got {text!r})") from None
        ok = (math.isfinite(value) and (value >= low if low_inclusive else value > low)
              and (value <= high if high_inclusive else value < high))
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {what} (got {text!r})")
        return value

    parse.__name__ = f"float in {left}{low:g}, {high:g}{right}"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
positive_float = float_in(0.0)
open_fraction = float_in(0.0, 1.0)                              # shares that must leave something on both sides
fraction_up_to_one = float_in(0.0, 1.0, high_inclusive=True)   # shares where "all" is allowed
