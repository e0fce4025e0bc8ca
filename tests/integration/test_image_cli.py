"""The image verbs end to end through the CLI and the daemon: build (Dockerfile and debian),
load/save with podman as the peer, inspect/history/tag/rm/prune."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Isobox, require

pytestmark = pytest.mark.root

DOCKERFILE = """\
# comments and continuations
ARG GREETING=hello
FROM busybox
ARG GREETING
ENV APP_HOME=/app \\
    MODE=test
WORKDIR $APP_HOME
COPY one.txt ./
COPY sub /app/sub/
ADD arch.tar /opt/x/
RUN echo "$GREETING from RUN" && echo built > /app/built.txt && rm /etc/group && mkdir -p /data && echo d > /data/f
RUN rm -rf /data && mkdir /data && echo again > /data/g
USER 1000
LABEL org.example.k="v 1" other=x
EXPOSE 8080 53/udp
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /app/one.txt /app/built.txt; ls /data; id -u; pwd; echo $MODE"]
"""
EXPECTED = "file one\nbuilt\ng\n1000\n/app\ntest\n"


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ctx = tmp_path_factory.mktemp("ctx")
    (ctx / "one.txt").write_text("file one\n")
    (ctx / "sub").mkdir()
    (ctx / "sub" / "s.txt").write_text("sub\n")
    subprocess.run(["tar", "cf", str(ctx / "arch.tar"), "-C", str(ctx), "one.txt", "sub"], check=True)
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    return ctx


@pytest.fixture(scope="module")
def app(isobox: Isobox, context: Path) -> str:
    done = isobox.cli("build", "-t", "localhost/app:1", str(context), check=True)
    assert "hello from RUN" in done.stderr
    return done.stdout.strip()


def test_dockerfile_build_runs(isobox: Isobox, app: str) -> None:
    assert app.startswith("sha256:")
    run = isobox.cli("run", "--rm", "localhost/app:1", check=True)
    assert run.stdout == EXPECTED
    run = isobox.cli("run", "--rm", "localhost/app:1", "ls /etc/group; ls /opt/x/sub", check=False)
    assert "No such file" in run.stderr and "s.txt" in run.stdout  # RUN's whiteout, ADD's unpacked tar
    info = json.loads(isobox.cli("image", "inspect", "localhost/app:1", check=True).stdout)[0]
    assert info["Config"]["User"] == "1000" and info["Config"]["WorkingDir"] == "/app"
    labels = info["Config"]["Labels"]
    assert labels["org.example.k"] == "v 1" and labels["other"] == "x"
    assert labels["org.opencontainers.image.title"] == "busybox"  # inherited from FROM, as in Docker
    assert set(info["Config"]["ExposedPorts"]) == {"8080/tcp", "53/udp"}
    assert "GREETING" not in " ".join(info["Config"]["Env"])  # ARGs do not persist
    history = json.loads(isobox.cli("image", "history", "--format", "json", "localhost/app:1", check=True).stdout)
    assert history[0]["CreatedBy"].startswith("CMD") and "busybox" in history[-1]["CreatedBy"]


def test_a_second_build_comes_from_the_cache(isobox: Isobox, context: Path, app: str) -> None:
    started = time.monotonic()
    done = isobox.cli("build", "-t", "localhost/app:1", str(context), check=True)
    assert done.stdout.strip() == app
    assert done.stderr.count("Using cache") >= 6
    assert time.monotonic() - started < 10
    assert isobox.cli("ps", "-aq", check=True).stdout.strip() == ""  # no RUN container left


def test_unsupported_instructions_are_named(isobox: Isobox, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox\nHEALTHCHECK CMD true\n")
    done = isobox.cli("build", "-t", "localhost/bad:1", str(tmp_path))
    assert done.returncode == 125
    assert "line 2: HEALTHCHECK is not supported" in done.stderr
    (tmp_path / "Dockerfile").write_text("FROM busybox\nFROBNICATE x\n")
    assert "FROBNICATE" in isobox.cli("build", str(tmp_path)).stderr


def test_a_failing_run_leaves_no_tagged_image_and_no_container(isobox: Isobox, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN echo partial > /p && exit 3\n")
    done = isobox.cli("build", "-t", "localhost/fail:1", str(tmp_path))
    assert done.returncode == 125 and "exited with code 3" in done.stderr
    assert isobox.cli("image", "inspect", "localhost/fail:1").returncode == 125
    assert isobox.cli("ps", "-aq", check=True).stdout.strip() == ""


def test_copy_cannot_reach_outside_the_context(isobox: Isobox, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "link").symlink_to("/etc")
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY ../secret /x\n")
    assert "outside the build context" in isobox.cli("build", str(ctx)).stderr
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY link/passwd /x\n")
    assert "outside the build context" in isobox.cli("build", str(ctx)).stderr


def test_tag_rm_in_use_and_prune(isobox: Isobox, app: str) -> None:
    isobox.cli("image", "tag", "localhost/app:1", "localhost/app:keep", check=True)
    created = isobox.cli("create", "--name", "uses-app", "localhost/app:keep", check=True)
    assert created.returncode == 0
    isobox.cli("rmi", "localhost/app:1", check=True)  # only untags: another tag remains
    refused = isobox.cli("image", "rm", "localhost/app:keep")
    assert refused.returncode == 125 and "in use" in refused.stderr
    # A VM run of the image would have left its root disk base and overlay template: they go with it.
    app_id = json.loads(isobox.cli("image", "inspect", "localhost/app:keep", check=True).stdout)[0]["Id"]
    vm_disks = isobox.root / "vmdisks"
    (vm_disks / "overlays").mkdir(parents=True, exist_ok=True)
    made = [vm_disks / f"{app_id[7:39]}.ext4", vm_disks / "overlays" / f"{app_id[7:39]}-0123456789abcdef.qcow2"]
    for path in made:
        path.write_bytes(b"disk")
    isobox.cli("image", "rm", "-f", "localhost/app:keep", check=True)
    assert isobox.cli("ps", "-aq", check=True).stdout.strip() == ""
    assert not any(path.exists() for path in made)
    pruned = isobox.cli("image", "prune", check=True)
    assert "Total reclaimed space" in pruned.stdout
    listed = json.loads(isobox.cli("image", "ls", "--format", "json", check=True).stdout)
    assert all(i["RepoTags"] for i in listed)  # dangling intermediates are gone
    assert any("busybox:latest" in i["RepoTags"] for i in listed)


# -- podman as the peer ---------------------------------------------------------------------------


def podman(box: Isobox, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    base = box.base / "podman"
    cmd = ["podman", "--root", str(base / "root"), "--runroot", str(base / "run"), "--runtime", "runc",
           "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--storage-driver", "vfs", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {done.stderr}")
    return done


RUN_FLAGS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--network", "none")


def test_podman_interop_both_ways(isobox: Isobox, tmp_path: Path) -> None:
    # isobox -> podman
    out = tmp_path / "bb.tar"
    isobox.cli("image", "save", "-o", str(out), "busybox", check=True)
    assert "localhost/busybox:latest" in podman(isobox, "load", "-i", str(out)).stdout
    assert podman(isobox, "run", "--rm", *RUN_FLAGS, "busybox:latest", "echo", "in podman").stdout == "in podman\n"

    # podman adds layers with whiteouts (buildah, chroot isolation), then saves both formats
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM localhost/busybox:latest\n"
        "RUN rm -rf /etc/group /home && mkdir /opq && echo 1 > /opq/a\n"
        "RUN rm -rf /opq && mkdir /opq && echo 2 > /opq/b\n"
        'CMD ["sh", "-c", "ls /opq; cat /opq/b; test -e /etc/group || echo no-group; test -e /home || echo no-home"]\n')
    built = podman(isobox, "build", "--isolation", "chroot", "-t", "localhost/pm:1", str(ctx), check=False)
    assert built.returncode == 0, f"podman build: {built.stderr[-300:]}"
    expected = "b\n2\nno-group\nno-home\n"
    assert podman(isobox, "run", "--rm", *RUN_FLAGS, "localhost/pm:1").stdout == expected
    for fmt in ("docker-archive", "oci-archive"):
        archive = tmp_path / f"pm-{fmt}.tar"
        podman(isobox, "save", "--format", fmt, "-o", str(archive), "localhost/pm:1")
        loaded = isobox.cli("image", "load", "-i", str(archive), check=True)
        assert "Loaded image: localhost/pm:1" in loaded.stdout, loaded.stdout
        assert isobox.cli("run", "--rm", "localhost/pm:1", check=True).stdout == expected
        info = json.loads(isobox.cli("image", "inspect", "localhost/pm:1", check=True).stdout)[0]
        podman_id = podman(isobox, "image", "inspect", "--format", "{{.Id}}", "localhost/pm:1").stdout.strip()
        assert info["Id"] == "sha256:" + podman_id  # the same config blob, the same id
        isobox.cli("image", "rm", "localhost/pm:1", check=True)


# -- debian (mmdebstrap: the one slow build of the suite) ------------------------------------------


def test_debian_bookworm_build_is_cached(isobox: Isobox) -> None:
    # The Debian mirror is one of the registries this machine reaches (setup.sh needs it too):
    # a failed build is a failure, not an environment to skip.
    require("mmdebstrap", "podman")
    first = isobox.cli("image", "build", "debian:bookworm", timeout=900)
    assert first.returncode == 0, first.stderr
    started = time.monotonic()
    second = isobox.cli("image", "build", "debian:bookworm", check=True)
    assert time.monotonic() - started < 5 and second.stdout == first.stdout
    run = isobox.cli("run", "--rm", "debian:bookworm", "sh", "-c", "cat /etc/debian_version; ls /dev | wc -l",
                     check=True)
    assert run.stdout.split()[0].startswith("12.")


def test_an_interrupted_build_leaves_no_image_no_container(isobox: Isobox, tmp_path: Path) -> None:
    import signal

    from tests.conftest import VENV_BIN

    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN echo started; sleep 60\n")
    proc = subprocess.Popen([str(VENV_BIN / "isobox"), "build", "--no-cache", "-t", "localhost/interrupted:1",
                             str(tmp_path)], env=isobox.env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "started" in line:
            break
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    proc.wait(10)
    deadline = time.monotonic() + 10
    while isobox.cli("ps", "-aq", check=True).stdout.strip() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert isobox.cli("ps", "-aq", check=True).stdout.strip() == ""
    assert isobox.cli("image", "inspect", "localhost/interrupted:1").returncode == 125
    assert [p for p in (isobox.root / "images" / "tmp").iterdir()] == []
