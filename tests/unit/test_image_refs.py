"""Image references: Docker's grammar, isobox's normalization (no docker.io rewriting)."""

from __future__ import annotations

import pytest

from isobox.errors import InvalidArgument
from isobox.images import refs


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("busybox", "busybox:latest"),
        ("busybox:latest", "busybox:latest"),
        ("busybox:1.35", "busybox:1.35"),
        ("debian:bookworm", "debian:bookworm"),
        ("localhost/app:1", "localhost/app:1"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/team/app", "localhost:5000/team/app:latest"),
        ("registry.example.org/a/b:v1.2-rc_3", "registry.example.org/a/b:v1.2-rc_3"),
        ("my_app", "my_app:latest"),
        ("my__app", "my__app:latest"),
        ("my-----app", "my-----app:latest"),
        ("a.b", "a.b:latest"),
        ("app:UPPER_tag", "app:UPPER_tag"),
        ("busybox@sha256:" + "a" * 64, "busybox@sha256:" + "a" * 64),
        ("busybox:1@sha256:" + "0" * 64, "busybox:1@sha256:" + "0" * 64),
    ],
)
def test_normalize_accepts(ref: str, expected: str) -> None:
    assert refs.normalize(ref) == expected
    assert refs.normalize(expected) == expected  # idempotent


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        ("", "empty"),
        ("Busybox", "lowercase"),
        ("localhost/App:1", "lowercase"),
        ("bus box", "whitespace"),
        (" busybox", "whitespace"),
        ("busybox\n", "whitespace"),
        ("a..b", "bad path component"),
        ("../etc", "bad path component"),
        ("app/../x", "bad path component"),
        ("app//x", "bad path component"),
        ("/app", "bad path component"),
        ("app/", "bad path component"),
        ("busybox:", "bad tag"),
        ("busybox:-x", "bad tag"),
        ("busybox:" + "t" * 129, "bad tag"),
        (":latest", "empty repository"),
        ("busybox@sha256:abc", "digest"),
        ("busybox@md5:" + "a" * 32, "digest"),
        ("busybox@sha256:" + "A" * 64, "digest"),
        ("-app", "may only hold"),
        ("app_", "may only hold"),
        ("a" * 256, "longer than"),
    ],
)
def test_normalize_rejects_with_one_line(ref: str, why: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        refs.normalize(ref)
    message = info.value.message
    assert why in message
    assert "\n" not in message
    assert message.startswith("invalid reference format")


def test_parse_parts() -> None:
    ref = refs.parse("localhost:5000/team/app:2")
    assert ref.repository == "localhost:5000/team/app"
    assert ref.domain == "localhost:5000"
    assert ref.basename == "app"
    assert ref.tag == "2"
    assert ref.digest is None
    assert refs.parse("team/app").domain is None  # no "." or ":": a path, not a registry
    digest = refs.parse("busybox@sha256:" + "b" * 64)
    assert digest.tag is None
    assert digest.digest == "sha256:" + "b" * 64


def test_looks_like_id() -> None:
    assert refs.looks_like_id("sha256:" + "c" * 64)
    assert refs.looks_like_id("ca3ce7b0")
    assert not refs.looks_like_id("sha256:")
    assert not refs.looks_like_id("busybox")
    assert not refs.looks_like_id("CA3CE7")
    assert not refs.looks_like_id("a" * 65)
