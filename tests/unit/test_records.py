"""records.dataclass behaves as dataclasses.dataclass for what the container runtime uses."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from typing import Any

import pytest

from isobox.runtimes.container import records


def _pair(frozen: bool) -> tuple[type[Any], type[Any]]:
    """The same class through each decorator, as module attributes (pickle finds them there)."""
    classes = []
    for make, field in ((dataclasses.dataclass, dataclasses.field), (records.dataclass, records.field)):

        class Point:
            """A point."""

            x: int
            y: int = 0
            tags: list[str] = field(default_factory=list)
            label: str | None = field(default=None)

            def norm(self) -> int:
                return abs(self.x) + abs(self.y)

        name = f"{'Frozen' if frozen else ''}{'Std' if make is dataclasses.dataclass else 'Rec'}Point"
        Point.__name__ = Point.__qualname__ = name
        classes.append(make(frozen=frozen)(Point))
        globals()[name] = classes[-1]
    return classes[0], classes[1]


def _hash(obj: object) -> object:
    try:
        return hash(obj)
    except TypeError as exc:  # a list field: unhashable, from either
        return str(exc)


def _fields(obj: object) -> str:
    return repr(obj).split("(", 1)[1]


@pytest.mark.parametrize("frozen", [False, True])
def test_same_behaviour_as_dataclasses(frozen: bool) -> None:
    std, rec = _pair(frozen)
    for args, kwargs in [((1,), {}), ((1, 2), {"label": "p"}), ((), {"x": 3, "tags": ["a"]})]:
        a, b = std(*args, **kwargs), rec(*args, **kwargs)
        assert _fields(a) == _fields(b) and repr(b).startswith(f"{rec.__qualname__}(")
        assert b == rec(*args, **kwargs) and b != rec(99) and b != a  # other classes are never equal
        assert b.norm() == a.norm()
        assert pickle.loads(pickle.dumps(b)) == b and copy.deepcopy(b) == b
        if frozen:
            assert _hash(a) == _hash(b)
            assert hash(rec(1, 2, ("t",))) == hash(std(1, 2, ("t",)))  # type: ignore[arg-type]
            with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'x'"):
                b.x = 5
            with pytest.raises(dataclasses.FrozenInstanceError, match="cannot delete field 'y'"):
                del b.y
        else:
            with pytest.raises(TypeError, match="unhashable"):
                hash(b)
            b.x = 5
            assert b.x == 5
    assert rec(1).tags is not rec(1).tags, "default_factory makes a new value each time"
    assert rec.__match_args__ == std.__match_args__ == ("x", "y", "tags", "label")
    assert rec.y == std.y == 0 and not hasattr(rec, "tags")


@pytest.mark.parametrize("args,kwargs,message", [
    ((), {}, "missing 1 required positional argument: 'x'"),
    ((1, 2, [], None, 5), {}, "takes 5 positional arguments but 6 were given"),
    ((1,), {"z": 1}, "unexpected keyword argument 'z'"),
    ((1,), {"x": 1}, "multiple values for argument 'x'"),
])
def test_bad_arguments_are_type_errors(args: tuple[Any, ...], kwargs: dict[str, Any], message: str) -> None:
    _, rec = _pair(frozen=False)
    with pytest.raises(TypeError, match=message):
        rec(*args, **kwargs)


def test_post_init_runs() -> None:
    @records.dataclass(frozen=True)
    class Positive:
        n: int

        def __post_init__(self) -> None:
            if self.n <= 0:
                raise ValueError("not positive")

    assert Positive(1).n == 1
    with pytest.raises(ValueError, match="not positive"):
        Positive(0)
