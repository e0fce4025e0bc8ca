"""The workload spec, flag parsers and units: pure logic, no root."""

from __future__ import annotations

import pytest

from isobox.errors import InvalidArgument
from isobox.spec import Isolation, Mount, WorkloadSpec, parse_env, parse_volume
from isobox.units import format_size, parse_cpus, parse_size


def test_round_trip_through_json_shape() -> None:
    spec = WorkloadSpec(image="busybox", command=["echo", "hi"], env={"A": "1"},
                        mounts=[Mount("/srv", "/data", True)], isolation=Isolation.CONTAINER)
    again = WorkloadSpec.from_dict(spec.to_dict())
    assert again == spec
    assert isinstance(again.mounts[0], Mount)


def test_unknown_fields_are_rejected_not_ignored() -> None:
    with pytest.raises(InvalidArgument, match="unknown field"):
        WorkloadSpec.from_dict({"image": "busybox", "comand": ["true"]})
    with pytest.raises(InvalidArgument, match="unknown field"):
        WorkloadSpec.from_dict({"image": "busybox", "resources": {"memroy": 1}})


def test_bad_shapes_are_one_line_errors() -> None:
    for bad in ([], "x", {"image": "b", "isolation": "kvm"}, {"image": "b", "resources": []}):
        with pytest.raises(InvalidArgument) as err:
            WorkloadSpec.from_dict(bad)  # type: ignore[arg-type]
        assert "\n" not in err.value.message


@pytest.mark.parametrize("changes,message", [
    ({"image": ""}, "no image"),
    ({"name": "bad name"}, "invalid container name"),
    ({"hostname": "-bad"}, "invalid hostname"),
    ({"workdir": "relative"}, "not an absolute path"),
    ({"workdir": "/proc/self/fd/7"}, "not allowed"),
    ({"user": "a b"}, "invalid user"),
    ({"env": {"A=B": "1"}}, "invalid environment"),
    ({"mounts": [Mount("relative", "/x")]}, "absolute host path"),
    ({"mounts": [Mount("/x", "/")]}, "other than /"),
    ({"mounts": [Mount("/x", "/a/../b")]}, "'..'"),
    ({"network": "bad name!"}, "invalid network"),
])
def test_validate_rejects(changes: dict, message: str) -> None:
    spec = WorkloadSpec(image="busybox")
    for key, value in changes.items():
        setattr(spec, key, value)
    with pytest.raises(InvalidArgument, match=message):
        spec.validate()


def test_memory_floor_and_negative_pids_mean_unlimited() -> None:
    spec = WorkloadSpec(image="busybox")
    spec.resources.memory = 1024
    with pytest.raises(InvalidArgument, match="minimum memory"):
        spec.validate()
    spec = WorkloadSpec(image="busybox")
    spec.resources.pids_limit = -1
    assert spec.validate().resources.pids_limit is None


def test_parse_env() -> None:
    assert parse_env(["A=1", "B=", "C=x=y"]) == {"A": "1", "B": "", "C": "x=y"}
    assert parse_env(["HOME"], {"HOME": "/root"}) == {"HOME": "/root"}
    assert parse_env(["MISSING"], {}) == {}
    with pytest.raises(InvalidArgument):
        parse_env(["=x"])


def test_parse_volume() -> None:
    assert parse_volume("/a:/b") == Mount("/a", "/b", False)
    assert parse_volume("/a:/b:ro") == Mount("/a", "/b", True)
    assert parse_volume("/a:/b:rw,z") == Mount("/a", "/b", False)
    for bad in ("/a", "/a:/b:rx", ":/b", "/a:/b:ro:x"):
        with pytest.raises(InvalidArgument):
            parse_volume(bad)


@pytest.mark.parametrize("text,value", [
    ("512m", 512 << 20), ("1g", 1 << 30), ("1.5GiB", 3 << 29), ("100", 100), ("64k", 64 << 10), ("2MB", 2 << 20),
])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["abc", "", "-1m", "1x", "0"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_size(text, "--memory")


def test_parse_cpus_and_format_size() -> None:
    assert parse_cpus("0.5") == 0.5
    for bad in ("x", "0", "5000"):
        with pytest.raises(InvalidArgument):
            parse_cpus(bad)
    assert format_size(64 << 20) == "64MiB"
    assert format_size(512) == "512B"
