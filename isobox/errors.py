"""isobox's error tree.

    IsoboxError            anything isobox itself refuses or fails at (CLI exit 125)
    ├── InvalidArgument    bad user input: malformed flag, bad spec (HTTP 400)
    ├── NotFound           unknown container, image, ... (HTTP 404)
    ├── Conflict           name clash, wrong state for the operation (HTTP 409)
    └── RuntimeFailure     the host refused: a syscall, a mount, a cgroup write (HTTP 500)

Every error carries a one-line ``message`` and an optional ``hint`` (what to do about it).
"""

from __future__ import annotations


class IsoboxError(Exception):
    status = 500

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict[str, str | None]:
        return {"message": self.message, "hint": self.hint, "kind": type(self).__name__}


class InvalidArgument(IsoboxError):
    status = 400


class NotFound(IsoboxError):
    status = 404


class Conflict(IsoboxError):
    status = 409


class RuntimeFailure(IsoboxError):
    status = 500


ERRORS_BY_KIND: dict[str, type[IsoboxError]] = {
    cls.__name__: cls for cls in (IsoboxError, InvalidArgument, NotFound, Conflict, RuntimeFailure)
}

# Docker's exit codes for the CLI.
EXIT_ISOBOX_ERROR = 125
EXIT_CANNOT_INVOKE = 126
EXIT_NOT_FOUND = 127
