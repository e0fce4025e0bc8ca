"""isobox-runtime's JSON (jsonio.py) gives exactly what the json package gives."""

from __future__ import annotations

import json
from typing import Any

import pytest

from isobox.oci import jsonio

DOCS: list[Any] = [
    {}, [], "text", 7, -1.5, None, True,
    {"ociVersion": "1.0.2", "id": "c1", "pid": 42, "status": "running", "annotations": {"a/b": "c"},
     "nested": {"list": [1, [2, {}], {"x": []}], "empty": {}}, "float": 0.1, "big": 2**70, "null": None},
    {"unicode": "é ✓ \u2028 \U0001f600", "escapes": "\"\\\n\t\x00"},
    [float("inf"), float("-inf"), -0.0],
]


@pytest.mark.parametrize("doc", DOCS)
@pytest.mark.parametrize("indent", [None, 2])
def test_dumps_is_json_dumps(doc: Any, indent: int | None) -> None:
    assert jsonio.dumps(doc, indent=indent) == json.dumps(doc, indent=indent)


@pytest.mark.parametrize("doc", DOCS)
def test_loads_is_json_loads(doc: Any) -> None:
    text = json.dumps(doc)
    for data in (text, f" \n\t{text}\r\n ", text.encode(), f"  {text} ".encode()):
        assert repr(jsonio.loads(data)) == repr(json.loads(data))


def _outcome(fn: Any, *args: Any, **kwargs: Any) -> tuple[str, str]:
    try:
        return "ok", repr(fn(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - the comparison is the point
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("data", [
    "", "   ", '{"a": }', '{"a": 1} x', "[1,]", '{"a" 1}', "nan", "[NaN, Infinity, -Infinity]", "\ufeff{}",
    b"\xef\xbb\xbf{}", '{"a": 1}'.encode("utf-16"), '["x"]'.encode("utf-32-le"), b"\xff", b'"\xed\xa0\x80"',
])
def test_bad_or_unusual_input_behaves_as_json(data: str | bytes) -> None:
    assert _outcome(jsonio.loads, data) == _outcome(json.loads, data)


@pytest.mark.parametrize("doc", [{1: 2}, {(1,): 2}, {"a": object()}, b"bytes", {"a": {None: 1}}, {"a": {1.5: 1}}])
@pytest.mark.parametrize("indent", [None, 2])
def test_what_json_refuses_or_converts_goes_through_json(doc: Any, indent: int | None) -> None:
    assert _outcome(jsonio.dumps, doc, indent=indent) == _outcome(json.dumps, doc, indent=indent)
