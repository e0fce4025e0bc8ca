"""JSON on ``isobox-runtime``'s start-up path: json's own C accelerator, without json's modules.

``import json`` imports ``re`` (and ``enum``), about 10 ms per runtime call on the build
machine: more than ``start`` or ``state`` take otherwise.  The scanner and encoder json itself
uses live in the C module ``_json``; ``loads`` and ``dumps`` here call them with the settings
``json.loads`` and ``json.dumps`` use, so their results are the same.  Whatever the fast path
does not cover (invalid JSON, a BOM or UTF-16/32 input, objects JSON cannot encode, non-string
keys with ``indent``) is handed to the json package, so errors are json's own.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

try:
    from _json import encode_basestring_ascii, make_encoder, make_scanner

    FAST = True
except ImportError:  # another Python: the json package does all of it
    FAST = False

_WHITESPACE = " \t\n\r"  # json.decoder.WHITESPACE


class _DecoderSettings:
    """What the C scanner reads off a ``json.JSONDecoder()`` with default arguments."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__


_scan = make_scanner(_DecoderSettings()) if FAST else None  # type: ignore[arg-type]


class _Fallback(Exception):
    pass


def loads(data: str | bytes) -> Any:
    """``json.loads(data)``."""
    if _scan is None:
        return _json_loads(data)
    if isinstance(data, bytes):
        # json.loads detects UTF-16/32 from NULs in the first bytes, and a BOM: leave those to it.
        if b"\x00" in data[:4] or data[:2] in (b"\xff\xfe", b"\xfe\xff") or data[:3] == b"\xef\xbb\xbf":
            return _json_loads(data)
        try:
            text = data.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return _json_loads(data)
    else:
        text = data
    try:
        obj, end = _scan(text, len(text) - len(text.lstrip(_WHITESPACE)))
    except (StopIteration, ValueError, RecursionError):
        return _json_loads(data)
    if text[end:].strip(_WHITESPACE) or text.startswith("\ufeff"):
        return _json_loads(data)
    return obj


def dumps(obj: Any, indent: int | None = None) -> str:
    """``json.dumps(obj)`` or ``json.dumps(obj, indent=indent)``."""
    if not FAST:
        return _json_dumps(obj, indent)
    try:
        return _dumps(obj) if indent is None else _pretty(obj, indent, 0)
    except (TypeError, ValueError, RecursionError, _Fallback):
        return _json_dumps(obj, indent)


def _dumps(obj: Any) -> str:
    if isinstance(obj, str):
        return encode_basestring_ascii(obj)  # type: ignore[no-any-return]
    # The arguments json.JSONEncoder() passes for a one-shot encode with its defaults.
    encode = make_encoder({}, _not_serializable, encode_basestring_ascii, None, ": ", ", ", False, False, True)
    return "".join(encode(obj, 0))


def _not_serializable(obj: Any) -> Any:
    raise TypeError(f"Object of type {obj.__class__.__name__} is not JSON serializable")


def _pretty(obj: Any, indent: int, level: int) -> str:
    """json's indented layout (separators ``,`` and ``: ``), for the documents this runtime prints."""
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        if not all(isinstance(key, str) for key in obj):
            raise _Fallback
        items = [f"{encode_basestring_ascii(key)}: {_pretty(value, indent, level + 1)}" for key, value in obj.items()]
    elif isinstance(obj, (list, tuple)):
        if not obj:
            return "[]"
        items = [_pretty(value, indent, level + 1) for value in obj]
    else:
        return _dumps(obj)
    inner, outer = "\n" + " " * (indent * (level + 1)), "\n" + " " * (indent * level)
    opening, closing = ("{", "}") if isinstance(obj, dict) else ("[", "]")
    return opening + inner + ("," + inner).join(items) + outer + closing


def _json_loads(data: str | bytes) -> Any:
    import json  # noqa: PLC0415 - the slow path, see the module docstring

    return json.loads(data)


def _json_dumps(obj: Any, indent: int | None) -> str:
    import json  # noqa: PLC0415 - the slow path, see the module docstring

    return json.dumps(obj, indent=indent)
