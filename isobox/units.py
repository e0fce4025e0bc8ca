"""Parsing of the human units users type in flags (``--memory 512m``, ``--cpus 1.5``)."""

from __future__ import annotations

import re

from isobox.errors import InvalidArgument

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)(i?b)?\s*$", re.IGNORECASE)
_SUFFIX = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, what: str = "size") -> int:
    """Docker's RAMInBytes: ``512m``, ``1g``, ``1.5GiB``, plain bytes; binary multiples."""
    match = _SIZE_RE.match(str(text))
    if not match:
        raise InvalidArgument(f"invalid {what} {text!r}", hint="use a number with an optional unit: b, k, m, g")
    number, unit = float(match.group(1)), match.group(2).lower()
    value = int(number * _SUFFIX[unit])
    if value <= 0:
        raise InvalidArgument(f"invalid {what} {text!r}: must be positive")
    return value


def parse_cpus(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidArgument(f"invalid --cpus {text!r}", hint="a decimal number such as 0.5 or 2") from None
    if not 0.01 <= value <= 1024:
        raise InvalidArgument(f"invalid --cpus {text!r}: must be between 0.01 and 1024")
    return value


def format_size(num: float) -> str:
    """Docker-style human size: ``1.5MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(num) < 1024 or unit == "TiB":
            return f"{num:.0f}{unit}" if unit == "B" else f"{num:.3g}{unit}"
        num /= 1024
    return f"{num}TiB"
