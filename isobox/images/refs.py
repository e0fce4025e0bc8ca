"""Image references, Docker's grammar (distribution/reference), without the docker.io rewriting.

    reference := name [ ":" tag ] [ "@" digest ]
    name      := [ domain "/" ] component ( "/" component )*
    domain    := host [ ":" port ]          (first part, if it has "." or ":" or is "localhost")
    component := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag       := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest    := "sha256:" 64 lowercase hex

isobox never pulls, so ``busybox`` stays ``busybox:latest`` rather than becoming
``docker.io/library/busybox:latest``; ``localhost/app:1`` and ``debian:bookworm`` stay as given.
Everything here is pure: no state, no I/O.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from isobox.errors import InvalidArgument

DEFAULT_TAG = "latest"
NAME_MAX = 255

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
_HOST_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"{_HOST_PART}(?:\.{_HOST_PART})*(?::[0-9]+)?")
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class Reference:
    repository: str            # domain and path: "busybox", "localhost/app", "registry:5000/a/b"
    tag: str | None = None     # None only when a digest is given without a tag
    digest: str | None = None  # "sha256:<hex>"

    @property
    def domain(self) -> str | None:
        first, sep, _ = self.repository.partition("/")
        return first if sep and _is_domain(first) else None

    @property
    def basename(self) -> str:
        """Last path component: ``busybox`` for ``localhost/library/busybox``."""
        return self.repository.rsplit("/", 1)[-1]

    def __str__(self) -> str:
        text = self.repository
        if self.tag is not None:
            text += ":" + self.tag
        if self.digest is not None:
            text += "@" + self.digest
        return text


def parse(ref: str) -> Reference:
    """Parse and normalize ``ref``; raises InvalidArgument with one line saying what is wrong."""
    if not isinstance(ref, str) or not ref:
        raise InvalidArgument("invalid reference format: empty image name")
    if ref != ref.strip() or any(c.isspace() for c in ref):
        raise InvalidArgument(f'invalid reference format: {_quote(ref)}: whitespace is not allowed')

    remainder, at, digest = ref.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        raise InvalidArgument(
            f"invalid reference format: {_quote(ref)}: digest must be sha256: and 64 lowercase hex digits"
        )
    # A ":" after the last "/" starts the tag; one before it belongs to a registry port.
    tag: str | None = None
    slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > slash:
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise InvalidArgument(f'invalid reference format: {_quote(ref)}: bad tag {_quote(tag)}')
    _check_repository(ref, remainder)
    if tag is None and not at:
        tag = DEFAULT_TAG
    return Reference(remainder, tag, digest if at else None)


def normalize(ref: str) -> str:
    """``busybox`` -> ``busybox:latest``; anything malformed -> InvalidArgument."""
    return str(parse(ref))


def looks_like_id(ref: str) -> bool:
    """True for ``sha256:<hex>`` or a bare lowercase hex string (a full id or a prefix of one)."""
    hexpart = ref.removeprefix("sha256:")
    return bool(hexpart) and len(hexpart) <= 64 and _HEX.fullmatch(hexpart) is not None


def _quote(ref: str) -> str:
    """The reference in double quotes, control characters escaped: the message stays one line."""
    return json.dumps(ref)


def _is_domain(part: str) -> bool:
    return ("." in part or ":" in part or part == "localhost") and _DOMAIN.fullmatch(part) is not None


def _check_repository(ref: str, repository: str) -> None:
    if not repository:
        raise InvalidArgument(f'invalid reference format: {_quote(ref)}: empty repository name')
    if len(repository) > NAME_MAX:
        raise InvalidArgument(f'invalid reference format: {_quote(ref)}: repository name longer than {NAME_MAX}')
    parts = repository.split("/")
    if len(parts) > 1 and _is_domain(parts[0]):
        parts = parts[1:]
    for part in parts:
        if _COMPONENT.fullmatch(part):
            continue
        if _COMPONENT.fullmatch(part.lower()):
            raise InvalidArgument(f'invalid reference format: {_quote(ref)}: repository name must be lowercase')
        if ".." in part or not part:
            raise InvalidArgument(f'invalid reference format: {_quote(ref)}: bad path component {_quote(part)}')
        raise InvalidArgument(
            f'invalid reference format: {_quote(ref)}: {_quote(part)} may only hold a-z, 0-9 and single . _ - separators'
        )
