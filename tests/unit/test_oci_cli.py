"""The isobox-runtime command line: flags engines pass, clear errors, state documents."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from isobox.oci import cli, state
from isobox.oci.lifecycle import parse_signal


def test_conmon_style_create_line() -> None:
    args = cli.parse(["--root", "/run/x", "--log=/tmp/log.json", "--log-format", "json", "--systemd-cgroup=false",
                      "create", "--bundle", "/b", "--pid-file=/p", "--console-socket", "/s", "--no-new-keyring", "id1"])
    assert args.command == "create" and args.positional == ["id1"]
    assert args.opts == {"root": "/run/x", "log": "/tmp/log.json", "log_format": "json", "systemd_cgroup": False,
                         "bundle": "/b", "pid_file": "/p", "console_socket": "/s", "no_new_keyring": True}


def test_exec_arguments_after_the_id_are_the_command() -> None:
    args = cli.parse(["exec", "-t", "--env", "A=1", "-e", "B=2", "id1", "sh", "-c", "ls -l"])
    assert args.positional == ["id1", "sh", "-c", "ls -l"]
    assert args.opts == {"tty": True, "env": ["A=1", "B=2"]}


def test_kill_and_delete_flags() -> None:
    assert cli.parse(["kill", "--all", "id1", "KILL"]).positional == ["id1", "KILL"]
    assert cli.parse(["delete", "-f", "id1"]).opts == {"force": True}


@pytest.mark.parametrize("argv,message", [
    (["--bogus", "state", "x"], "unknown flag '--bogus' for isobox-runtime"),
    (["create", "--frobnicate", "x"], "unknown flag '--frobnicate' for create"),
    (["teleport", "x"], "unknown command 'teleport'"),
    (["state"], "expected 1 argument"),
    (["start", "a", "b"], "expected 1 argument"),
    ([], "no command given"),
    (["create", "--bundle"], "needs a value"),
])
def test_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(cli.UsageError, match=message):
        cli.parse(argv)


def test_systemd_cgroup_is_a_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    log = tmp_path / "log"
    code = cli.main(["--systemd-cgroup", "--log", str(log), "--log-format", "json", "create", "--bundle", "/x", "c"])
    assert code == 1
    err = capsys.readouterr().err
    assert "--systemd-cgroup is not supported" in err and "cgroup-manager cgroupfs" in err
    assert json.loads(log.read_text())["level"] == "error"


def test_features_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["features"]) == 0
    features = json.loads(capsys.readouterr().out)
    assert features["ociVersionMin"] == "1.0.0" and "pid" in features["linux"]["namespaces"]
    assert "rbind" in features["mountOptions"] and "prestart" in features["hooks"]
    assert cli.main(["--version"]) == 0
    assert "isobox-runtime version" in capsys.readouterr().out


def test_signals() -> None:
    assert parse_signal("KILL") == parse_signal("SIGKILL") == parse_signal("9") == 9
    assert parse_signal("term") == 15
    with pytest.raises(Exception, match="unknown signal"):
        parse_signal("SIGNOPE")


def test_state_document_and_status(tmp_path: Path) -> None:
    sdir = state.StateDir(str(tmp_path), "c1")
    sdir.create()
    me = os.getpid()
    from isobox.runtimes.container.syscalls import process_start_time

    st = state.State("c1", me, process_start_time(me) or 0, "/b", "/b/rootfs", "2026-01-01T00:00:00Z", {"a": "b"})
    sdir.save(st)
    doc = state.document(sdir, sdir.load())
    assert {k: doc[k] for k in ("ociVersion", "id", "status", "pid", "bundle", "annotations")} == {
        "ociVersion": "1.0.2", "id": "c1", "status": "created", "pid": me, "bundle": "/b", "annotations": {"a": "b"}}
    os.unlink(sdir.fifo)
    assert state.status(sdir, st) == "running"
    st.start_time += 1  # a reused pid is not the container
    assert state.document(sdir, st)["status"] == "stopped" and state.document(sdir, st)["pid"] == 0
    with pytest.raises(Exception, match="already exists"):
        sdir.create()
    with pytest.raises(Exception, match="invalid container id"):
        state.StateDir(str(tmp_path), "../escape")
