"""The Dockerfile parser: continuations, forms, substitution, and refusing what isobox does not do."""

from __future__ import annotations

import pytest

from isobox.errors import InvalidArgument
from isobox.images.dockerfile import Instruction, check, pairs, parse, substitute


def test_parse_joins_continuations_and_drops_comments() -> None:
    text = "# syntax comment\nFROM busybox\n\nRUN echo a \\\n  # inside\n    && echo b\ncmd [\"sh\", \"-c\", \"x\"]\n"
    found = parse(text)
    assert [(i.line, i.keyword) for i in found] == [(2, "FROM"), (4, "RUN"), (7, "CMD")]
    assert found[1].args.split() == ["echo", "a", "&&", "echo", "b"]
    assert found[2].json_args == ["sh", "-c", "x"]
    assert parse("RUN [not json")[0].json_args is None


def test_substitute() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert substitute("$A ${A} ${B:-dflt} ${A:+alt} ${EMPTY:-e} ${EMPTY:+x} \\$A", env) == "1 1 dflt alt e  $A"


def test_pairs_both_forms() -> None:
    assert pairs(Instruction(1, "ENV", 'A=1 B="two words" C=$A'), {"A": "x"}) == [
        ("A", "1"), ("B", "two words"), ("C", "x")]
    assert pairs(Instruction(1, "ENV", "LEGACY value with spaces"), {}) == [("LEGACY", "value with spaces")]
    with pytest.raises(InvalidArgument):
        pairs(Instruction(3, "LABEL", "a=1 =2"), {})


@pytest.mark.parametrize(("text", "message"), [
    ("RUN true", "no FROM"),
    ("FROM a\nFROM b", "multi-stage"),
    ("FROM a\nHEALTHCHECK NONE", "line 2: HEALTHCHECK is not supported yet"),
    ("FROM a\nSHELL [\"bash\"]", "SHELL is not supported yet"),
    ("FROM a\nFROB x", "FROB is not a Dockerfile instruction"),
    ("ENV A=1\nFROM a", "ENV before FROM"),
    ("FROM a\nCOPY --from=b /x /y", "--from"),
])
def test_check_refuses_with_the_instruction_named(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        check(parse(text))


def test_check_accepts_the_supported_set() -> None:
    check(parse("ARG V=1\nFROM busybox\nARG X\nRUN a\nCOPY a b\nADD c d\nENV A=1\nWORKDIR /w\nUSER 1\n"
                "CMD x\nENTRYPOINT [\"y\"]\nLABEL a=b\nEXPOSE 80\n"))
