"""The CLI's flags: run/create flags -> WorkloadSpec, usage errors -> one line and 125, lean imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from isobox.cli import runspec
from isobox.cli.main import main, parse
from isobox.cli.runspec import spec_body, spec_from_args
from isobox.errors import InvalidArgument
from isobox.spec import DEFAULT_PIDS_LIMIT, Isolation, Mount, WorkloadSpec, parse_env, parse_volume


def spec(*argv: str, environ: dict[str, str] | None = None) -> WorkloadSpec:
    return spec_from_args(parse(["run", *argv]), environ or {})


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the CLI's main() (no daemon is involved: these fail before any request)."""
    assert main(list(argv)) == 125
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0].startswith("Error: ")
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), lines
    return lines[0]


# -- everything after IMAGE is the command ---------------------------------------------------------


def test_command_after_image_is_verbatim() -> None:
    s = spec("busybox", "ls", "-la", "--rm", "-e", "X=1")
    assert s.image == "busybox"
    assert s.command == ["ls", "-la", "--rm", "-e", "X=1"]
    assert s.auto_remove is False and s.env == {}


def test_no_command_means_the_images() -> None:
    assert spec("busybox").command == []


def test_flags_before_image() -> None:
    s = spec("--rm", "--name", "web", "-w", "/srv", "-u", "1000:1000", "--read-only", "--init", "busybox", "true")
    assert (s.auto_remove, s.name, s.workdir, s.user, s.read_only, s.init) == (True, "web", "/srv", "1000:1000", True, True)
    assert s.command == ["true"]


def test_dash_h_is_hostname_and_help_still_works(capsys: pytest.CaptureFixture[str]) -> None:
    assert spec("-h", "boxy", "busybox").hostname == "boxy"
    assert spec("--hostname", "box2", "busybox").hostname == "box2"
    with pytest.raises(SystemExit) as exc:
        parse(["run", "--help"])
    assert exc.value.code == 0
    assert "--hostname" in capsys.readouterr().out


def test_combined_short_flags() -> None:
    args = parse(["run", "-dit", "busybox", "sh"])
    assert (args.detach, args.interactive, args.tty) == (True, True, True)
    s = spec_from_args(args, {})
    assert s.tty and s.interactive


def test_create_has_no_detach_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert "unknown flag: -d" in usage_error(capsys, "create", "-d", "busybox")


# -- environment ------------------------------------------------------------------------------------


def test_env_values_and_passthrough() -> None:
    s = spec("-e", "A=1", "--env", "B=x=y", "-e", "HOME", "-e", "UNSET", "-eC=", "busybox",
             environ={"HOME": "/root"})
    assert s.env == {"A": "1", "B": "x=y", "HOME": "/root", "C": ""}


def test_env_file_then_flags_override(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# comment\n\nA=from-file\nB=kept\nUSER\n")
    s = spec("--env-file", str(env_file), "-e", "A=from-flag", "busybox", environ={"USER": "me"})
    assert s.env == {"A": "from-flag", "B": "kept", "USER": "me"}


def test_env_file_missing(capsys: pytest.CaptureFixture[str]) -> None:
    assert "cannot read --env-file /nonexistent/env" in usage_error(capsys, "run", "--env-file", "/nonexistent/env", "busybox")


# -- volumes ----------------------------------------------------------------------------------------


def test_volume_forms(tmp_path: Path) -> None:
    s = spec("-v", f"{tmp_path}:/data", "-v", f"{tmp_path}:/ro:ro", "busybox")
    assert s.mounts == [Mount(str(tmp_path), "/data", False), Mount(str(tmp_path), "/ro", True)]


def test_relative_volume_with_dot_resolves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    assert spec("-v", "./sub:/x", "busybox").mounts[0].source == str(tmp_path / "sub")


def test_volume_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert usage_error(capsys, "run", "-v", "/definitely/not/here:/x", "busybox") == \
        "Error: bind source path does not exist: /definitely/not/here"
    assert "is not an absolute host path" in usage_error(capsys, "run", "-v", "named:/x", "busybox")
    assert "invalid volume" in usage_error(capsys, "run", "-v", "/tmp", "busybox")
    assert "invalid volume option" in usage_error(capsys, "run", "-v", "/tmp:/x:bogus", "busybox")


# -- resources ---------------------------------------------------------------------------------------


def test_memory_cpus_pids() -> None:
    s = spec("--memory", "512m", "--cpus", "1.5", "--pids-limit", "100", "busybox")
    assert (s.resources.memory, s.resources.cpus, s.resources.pids_limit) == (512 << 20, 1.5, 100)
    assert spec("-m", "1g", "busybox").resources.memory == 1 << 30


def test_default_pids_limit_and_unlimited() -> None:
    assert spec("busybox").resources.pids_limit == DEFAULT_PIDS_LIMIT
    assert spec("--pids-limit", "-1", "busybox").resources.pids_limit is None
    assert spec("--pids-limit", "0", "busybox").resources.pids_limit is None


def test_bad_memory_is_one_line_and_125(capsys: pytest.CaptureFixture[str]) -> None:
    assert usage_error(capsys, "run", "--memory", "abc", "busybox") == "Error: invalid --memory 'abc'"


def test_bad_resource_values(capsys: pytest.CaptureFixture[str]) -> None:
    assert "invalid --cpus" in usage_error(capsys, "run", "--cpus", "lots", "busybox")
    assert "invalid --cpus" in usage_error(capsys, "run", "--cpus", "0", "busybox")
    assert "invalid --pids-limit" in usage_error(capsys, "run", "--pids-limit", "many", "busybox")
    assert "invalid --stop-timeout" in usage_error(capsys, "run", "--stop-timeout", "soon", "busybox")


# -- security -----------------------------------------------------------------------------------------


def test_security_defaults() -> None:
    sec = spec("busybox").security
    assert (sec.seccomp, sec.seccomp_profile, sec.no_new_privileges, sec.cap_add, sec.cap_drop) == \
        ("default", None, True, [], [])


def test_seccomp_unconfined_both_separators() -> None:
    assert spec("--security-opt", "seccomp=unconfined", "busybox").security.seccomp == "unconfined"
    assert spec("--security-opt", "seccomp:unconfined", "busybox").security.seccomp == "unconfined"


def test_seccomp_profile_file_is_sent_inline(tmp_path: Path) -> None:
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    sec = spec("--security-opt", f"seccomp={path}", "busybox").security
    assert (sec.seccomp, sec.seccomp_profile) == ("custom", profile)


def test_seccomp_profile_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "opening seccomp profile (/nonexistent.json) failed" in usage_error(
        capsys, "run", "--security-opt", "seccomp=/nonexistent.json", "busybox")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "is not valid JSON" in usage_error(capsys, "run", "--security-opt", f"seccomp={bad}", "busybox")
    bad.write_text("[1, 2]")
    assert "is not a JSON object" in usage_error(capsys, "run", "--security-opt", f"seccomp={bad}", "busybox")


def test_no_new_privileges_forms(capsys: pytest.CaptureFixture[str]) -> None:
    assert spec("--security-opt", "no-new-privileges", "busybox").security.no_new_privileges is True
    assert spec("--security-opt", "no-new-privileges=true", "busybox").security.no_new_privileges is True
    assert spec("--security-opt", "no-new-privileges=false", "busybox").security.no_new_privileges is False
    assert spec("--security-opt", "no-new-privileges:false", "busybox").security.no_new_privileges is False
    assert "invalid --security-opt" in usage_error(capsys, "run", "--security-opt", "no-new-privileges=maybe", "busybox")
    assert "unsupported --security-opt" in usage_error(capsys, "run", "--security-opt", "apparmor=x", "busybox")


def test_capabilities_normalised() -> None:
    sec = spec("--cap-add", "net_admin,CAP_SYS_TIME", "--cap-drop", "ALL", "busybox").security
    assert (sec.cap_add, sec.cap_drop) == (["NET_ADMIN", "SYS_TIME"], ["ALL"])


# -- isolation, network, entrypoint, misc ---------------------------------------------------------------


def test_isolation_is_passed_through(capsys: pytest.CaptureFixture[str]) -> None:
    assert spec("busybox").isolation == Isolation.CONTAINER
    assert spec("--isolation", "vm", "busybox").isolation == Isolation.VM
    assert spec("--isolation", "gvisor", "busybox").isolation == Isolation.GVISOR
    assert "invalid --isolation 'chroot'" in usage_error(capsys, "run", "--isolation", "chroot", "busybox")


def test_network_and_publish_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert spec("--network", "none", "busybox").network == "none"
    assert spec("busybox").network == "default"
    assert spec("--net", "backend", "busybox").network == "backend"
    ports = spec("-p", "8080:80", "-p", "127.0.0.1::53/udp", "busybox").ports
    assert [(p.host_port, p.container_port, p.protocol, p.host_ip) for p in ports] == \
        [(8080, 80, "tcp", ""), (0, 53, "udp", "127.0.0.1")]
    assert "invalid host port" in usage_error(capsys, "run", "-p", "99999:80", "busybox")
    assert "cannot publish ports" in usage_error(capsys, "run", "--network", "host", "-p", "80", "busybox")


def test_entrypoint() -> None:
    assert spec("busybox").entrypoint is None
    assert spec("--entrypoint", "/bin/sh", "busybox", "-c", "true").entrypoint == ["/bin/sh"]
    assert spec("--entrypoint", "", "busybox").entrypoint == []


def test_stop_timeout() -> None:
    assert spec("--stop-timeout", "3", "busybox").stop_timeout == 3


def test_body_sends_only_what_flags_set() -> None:
    body = spec_body(parse(["run", "--rm", "-m", "64m", "busybox", "true"]), {})
    assert body == {"image": "busybox", "command": ["true"], "isolation": "container", "network": "default",
                    "resources": {"memory": 64 << 20}, "auto_remove": True}
    assert WorkloadSpec.from_dict(json.loads(json.dumps(body))).validate().resources.pids_limit == DEFAULT_PIDS_LIMIT


def test_spec_validation_runs_in_spec_from_args() -> None:
    with pytest.raises(InvalidArgument, match="invalid container name"):
        spec("--name", "no spaces", "busybox")


@pytest.mark.parametrize("items", [["A=1"], ["A"], ["A=b=c", "B="], ["=x"], ["UNSET"], ["PATH"]])
def test_env_parsing_mirrors_the_spec_module(items: list[str]) -> None:
    environ = {"A": "from-env", "PATH": "/bin"}
    try:
        expected: object = parse_env(items, lookup=environ)
    except InvalidArgument as exc:
        expected = exc.message
    try:
        got: object = runspec.parse_env(items, environ)
    except InvalidArgument as exc:
        got = exc.message
    assert got == expected


@pytest.mark.parametrize("text", ["/a:/b", "/a:/b:ro", "/a:/b:rw", "/a:/b:ro,z", "/a", "/a:/b:c:d", ":/b", "/a:", "/a:/b:x"])
def test_volume_parsing_mirrors_the_spec_module(text: str) -> None:
    try:
        m = parse_volume(text)
        expected: object = {"source": m.source, "target": m.target, "readonly": m.readonly}
    except InvalidArgument as exc:
        expected = exc.message
    try:
        got: object = runspec.parse_volume(text)
    except InvalidArgument as exc:
        got = exc.message
    assert got == expected


# -- usage errors: one line, exit 125 ------------------------------------------------------------------


def test_unknown_flag_is_125(capsys: pytest.CaptureFixture[str]) -> None:
    assert usage_error(capsys, "run", "--bogus", "busybox") == "Error: unknown flag: --bogus (see 'isobox run --help')"
    assert usage_error(capsys, "ps", "--bogus") == "Error: unknown flag: --bogus (see 'isobox ps --help')"
    assert usage_error(capsys, "--bogus", "ps").startswith("Error: unknown flag: --bogus")


def test_missing_and_bad_arguments_are_125(capsys: pytest.CaptureFixture[str]) -> None:
    assert usage_error(capsys, "run") == "Error: missing IMAGE (see 'isobox run --help')"
    assert usage_error(capsys, "stop") == "Error: missing CONTAINER (see 'isobox stop --help')"
    assert "invalid int value" in usage_error(capsys, "stop", "-t", "soon", "web")
    assert usage_error(capsys, "frobnicate") == "Error: unknown command 'frobnicate' (see 'isobox --help')"
    assert usage_error(capsys, "image", "frobnicate").startswith("Error: unknown command 'frobnicate'")
    assert usage_error(capsys, "ps", "extra") == "Error: unexpected argument 'extra' (see 'isobox ps --help')"


def test_exec_needs_a_command(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISOBOX_SOCKET", "/nonexistent/isobox.sock")
    assert usage_error(capsys, "exec", "web").startswith("Error: exec needs a container and a command")


def test_other_verbs_parse() -> None:
    assert parse(["exec", "-it", "-e", "A=1", "web", "ls", "-l"]).command == ["ls", "-l"]
    assert parse(["stop", "-t", "3", "a", "b"]).containers == ["a", "b"]
    assert parse(["kill", "-s", "HUP", "a"]).signal == "HUP"
    assert parse(["logs", "-f", "--tail", "5", "-t", "web"]).tail == "5"
    assert parse(["image", "build", "busybox", "-t", "bb:1"]).cmd == "image_build"
    assert parse(["images"]).cmd == parse(["image", "ls"]).cmd == "image_ls"
    assert parse(["rmi", "-f", "x"]).cmd == parse(["image", "rm", "x"]).cmd == "image_rm"
    assert parse(["system", "info"]).cmd == parse(["info"]).cmd == "system_info"
    assert parse(["--debug", "ps", "-aq"]).debug is True


def test_help_lists_every_verb(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for verb in ("run", "create", "start", "stop", "kill", "rm", "ps", "logs", "exec", "inspect", "wait", "stats",
                 "image", "images", "rmi", "system", "info", "version"):
        assert f"    {verb} " in text or f"    {verb}\n" in text, verb


# -- start-up cost ---------------------------------------------------------------------------------------

HEAVY = ("fastapi", "pydantic", "uvicorn", "httpx", "rich", "starlette", "anyio")


def test_cli_imports_no_server_libraries() -> None:
    """What ``isobox run`` loads: parsing, the spec body, the client, the attach session."""
    code = (
        "import sys, json\n"
        "from isobox.cli.main import parse\n"
        "from isobox.cli import commands, client, session, output, runspec\n"
        "runspec.spec_body(parse(['run', '--rm', '-e', 'A=1', 'busybox', 'true']), {})\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"}).stdout
    loaded = set(json.loads(out))
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert heavy == [], heavy
    # The spec's dataclasses cost ~15 ms to import: the run path sends JSON instead.
    assert "isobox.spec" not in loaded
    assert "isobox.engine" not in loaded
