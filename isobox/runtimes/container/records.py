"""``dataclass`` and ``field`` for the modules on ``isobox-runtime``'s start-up path.

``isobox-runtime`` is a new process for every engine call (create, start, state, kill, delete),
and there ``import dataclasses`` (it pulls in ``inspect``, ``ast``, ``dis``, ``tokenize`` ...)
plus compiling each class's generated methods cost more than setting the container up.  This
``dataclass`` gives a class the same ``__init__`` (a generic one that binds like the generated
one), ``__eq__``, ``__repr__``, ``__match_args__`` and ``__post_init__`` call, and with
``frozen=True`` the same ``__hash__`` and ``FrozenInstanceError``, without compiling anything.
Only what the container runtime uses is supported (``frozen``; ``field(default=...,
default_factory=...)``); anything else is refused, so a class that needs more says so.

Type checkers see it as a dataclass (``dataclass_transform``).  Not provided:
``__dataclass_fields__`` (so ``dataclasses.fields``/``asdict``/``replace`` do not apply).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself costs milliseconds at start-up
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    T = TypeVar("T")
else:
    def dataclass_transform(**_kwargs: object) -> Callable[[T], T]:
        return lambda f: f

_MISSING = object()


class _Field:
    __slots__ = ("default", "default_factory")

    def __init__(self, default: Any, default_factory: Any) -> None:
        self.default, self.default_factory = default, default_factory


def field(*, default: Any = _MISSING, default_factory: Callable[[], Any] | Any = _MISSING) -> Any:
    if default is not _MISSING and default_factory is not _MISSING:
        raise ValueError("cannot specify both default and default_factory")
    return _Field(default, default_factory)


@dataclass_transform(field_specifiers=(field,))
def dataclass(cls: type[T] | None = None, /, *, frozen: bool = False) -> Any:
    def wrap(cls: type[T]) -> type[T]:
        return _process(cls, frozen)

    return wrap if cls is None else wrap(cls)


def _process(cls: type[T], frozen: bool) -> type[T]:
    # name -> (default, default_factory), in definition order, inherited fields first
    fields: dict[str, tuple[Any, Any]] = {name: (d, f) for name, d, f in getattr(cls, "__record_fields__", ())}
    namespace = cls.__dict__
    for name, annotation in namespace.get("__annotations__", {}).items():
        text = annotation if isinstance(annotation, str) else repr(annotation)
        if text.startswith(("ClassVar", "typing.ClassVar")):
            continue
        if text.startswith(("InitVar", "dataclasses.InitVar")):
            raise TypeError(f"{cls.__qualname__}.{name}: InitVar needs dataclasses.dataclass")
        default, factory = namespace.get(name, _MISSING), _MISSING
        if isinstance(default, _Field):
            default, factory = default.default, default.default_factory
            if default is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, default)
        fields[name] = (default, factory)  # (a redefined inherited field keeps its place, as in dataclasses)
    specs = [(name, default, factory) for name, (default, factory) in fields.items()]
    names = tuple(fields)
    known = frozenset(names)
    required = frozenset(name for name, default, factory in specs if default is _MISSING and factory is _MISSING)
    factories = tuple((name, factory) for name, _, factory in specs if factory is not _MISSING)
    # The instance's __dict__ starts as a copy of this (fields in order, as the generated __init__
    # assigns them); the values given replace entries in place, which keeps that order.
    template = {name: _MISSING if default is _MISSING else default for name, default, _ in specs}
    qualname = cls.__qualname__
    post_init = getattr(cls, "__post_init__", None) is not None

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if args:
            if len(args) > len(names):
                raise TypeError(f"{qualname}.__init__() takes {len(names) + 1} positional arguments "
                                f"but {len(args) + 1} were given")
            for name, value in zip(names, args, strict=False):
                if name in kwargs:
                    raise TypeError(f"{qualname}.__init__() got multiple values for argument {name!r}")
                kwargs[name] = value
        if not known.issuperset(kwargs):
            key = next(key for key in kwargs if key not in known)
            raise TypeError(f"{qualname}.__init__() got an unexpected keyword argument {key!r}")
        if not required.issubset(kwargs):
            name = next(name for name in names if name in required and name not in kwargs)
            raise TypeError(f"{qualname}.__init__() missing 1 required positional argument: {name!r}")
        values = template.copy()
        values.update(kwargs)
        for name, factory in factories:
            if name not in kwargs:
                values[name] = factory()
        vars(self).update(values)  # (no __setattr__: frozen records assign like object.__setattr__)
        if post_init:
            self.__post_init__()

    def _values(self: Any) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in names)

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is self.__class__:
            return _values(self) == _values(other)
        return NotImplemented

    def __repr__(self: Any) -> str:
        return f"{type(self).__qualname__}({', '.join(f'{n}={getattr(self, n)!r}' for n in names)})"

    cls.__record_fields__ = tuple(specs)  # type: ignore[attr-defined]
    cls.__match_args__ = names  # type: ignore[attr-defined,misc]
    cls.__init__ = __init__  # type: ignore[method-assign]
    if "__repr__" not in cls.__dict__:
        cls.__repr__ = __repr__  # type: ignore[method-assign]
    if "__eq__" not in cls.__dict__:
        cls.__eq__ = __eq__  # type: ignore[method-assign]
    if frozen:
        def __hash__(self: Any) -> int:
            return hash(_values(self))

        def __setattr__(self: Any, name: str, value: object) -> None:
            _frozen(f"cannot assign to field {name!r}")

        def __delattr__(self: Any, name: str) -> None:
            _frozen(f"cannot delete field {name!r}")

        cls.__hash__ = __hash__  # type: ignore[method-assign]
        cls.__setattr__ = __setattr__  # type: ignore[method-assign]
        cls.__delattr__ = __delattr__  # type: ignore[method-assign]
    elif "__hash__" not in cls.__dict__:
        cls.__hash__ = None  # type: ignore[assignment]  # mutable and compared by value
    return cls


def _frozen(message: str) -> None:
    from dataclasses import FrozenInstanceError  # noqa: PLC0415 - only on this error path

    raise FrozenInstanceError(message)
