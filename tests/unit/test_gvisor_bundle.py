"""The OCI bundle written for runsc, and the checks made before a sandbox starts."""

from __future__ import annotations

import os
from pathlib import Path

from isobox.runtimes.container.config import ProcessConfig
from isobox.runtimes.gvisor import bundle, runsc
from isobox.spec import Mount, Resources, WorkloadSpec


def _layer(tmp_path: Path) -> Path:
    layer = tmp_path / "layer"
    (layer / "bin").mkdir(parents=True)
    (layer / "etc").mkdir()
    (layer / "bin" / "busybox").write_text("")
    os.chmod(layer / "bin" / "busybox", 0o755)
    os.symlink("busybox", layer / "bin" / "sh")
    (layer / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/var/www:/bin/sh\n")
    (layer / "etc" / "group").write_text("root:x:0:\nwww:x:33:\nextra:x:77:www\n")
    (layer / "etc" / "notexec").write_text("")
    return layer


def test_config_maps_the_spec(tmp_path: Path) -> None:
    dirs = [str(_layer(tmp_path))]
    spec = WorkloadSpec(image="x", mounts=[Mount("/srv", "/data", readonly=True)],
                        resources=Resources(memory=64 << 20, cpus=0.5, pids_limit=100), read_only=True)
    ident = bundle.identity(dirs, "www")
    assert (ident.uid, ident.gid, ident.home) == (33, 33, "/var/www") and 77 in ident.groups
    proc = ProcessConfig(argv=["sh", "-c", "true"], env={"A": "1"}, cwd="/srv", caps=["CHOWN", "KILL"])
    cfg = bundle.config(spec, proc, ident, "boxy", "/r")
    assert cfg["process"]["user"] == {"uid": 33, "gid": 33, "additionalGids": [77]}
    assert cfg["process"]["capabilities"]["bounding"] == ["CAP_CHOWN", "CAP_KILL"]
    assert cfg["process"]["capabilities"]["effective"] == []  # not root: none held
    assert "A=1" in cfg["process"]["env"] and "HOME=/var/www" in cfg["process"]["env"]
    assert cfg["root"] == {"path": "/r", "readonly": True} and cfg["hostname"] == "boxy"
    assert {"destination": "/data", "type": "bind", "source": "/srv", "options": ["rbind", "ro"]} in cfg["mounts"]
    assert cfg["linux"]["resources"] == {"memory": {"limit": 64 << 20}, "cpu": {"quota": 50000, "period": 100000},
                                         "pids": {"limit": 100}}


def test_missing_and_non_executable_commands_get_dockers_codes(tmp_path: Path) -> None:
    dirs = [str(_layer(tmp_path))]
    env = {"PATH": "/bin"}
    assert bundle.check_executable(dirs, "sh", env) is None
    assert bundle.check_executable(dirs, "/bin/busybox", env) is None
    assert bundle.check_executable(dirs, "nope", env)[0] == 127  # type: ignore[index]
    assert bundle.check_executable(dirs, "/etc/notexec", env)[0] == 126  # type: ignore[index]


def test_a_symlinked_passwd_is_not_followed(tmp_path: Path) -> None:
    layer = _layer(tmp_path)
    (layer / "etc" / "passwd").unlink()
    os.symlink("/etc/passwd", layer / "etc" / "passwd")
    assert bundle.layer_reader([str(layer)])("/etc/passwd") == []


def test_platform_choice_is_forced_by_env(monkeypatch) -> None:
    monkeypatch.setenv("ISOBOX_RUNSC_PLATFORM", "ptrace")
    assert runsc.choose_platform("/nonexistent/runsc").platform == "ptrace"


def test_runsc_missing_is_a_hint_not_a_trace(monkeypatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("ISOBOX_RUNSC", raising=False)
    from isobox.runtimes.gvisor.runtime import GvisorRuntime

    facts = GvisorRuntime().host_facts()
    assert facts["available"] is False and facts["hint"] == "apt-get install runsc"
