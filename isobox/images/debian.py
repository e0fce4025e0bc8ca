"""``debian:SUITE`` images built with mmdebstrap from the Debian mirror.

The inputs (suite, variant, extra packages, mirror, architecture) hash into a build key kept
as a label on the image; a second build with the same key finds the image and only tags it,
so it is instant.  ``--no-cache`` semantics are "remove the image first".

mmdebstrap runs in root mode inside its own private mount namespace (``unshare -m``): the
/proc, /sys and /dev mounts it makes in the chroot die with it, even when the build is
interrupted, so cleaning the staging directory can never reach through them to the host.  The
device nodes it creates under /dev are removed before the tree becomes a layer (a container
gets its own minimal /dev; images with device nodes are refused on load).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from isobox.errors import InvalidArgument, RuntimeFailure
from isobox.images.store import EPOCH, Image, ImageConfig, ImageStore, Progress
from isobox.net import hostns

SUITES = ("bookworm", "trixie")
VARIANT = "minbase"
MIRROR = os.environ.get("ISOBOX_DEBIAN_MIRROR", "http://deb.debian.org/debian")
KEY_LABEL = "io.isobox.build.key"
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+(?::[a-z0-9]+)?")
HINT_INSTALL = "apt-get install mmdebstrap"


def build_key(suite: str, include: list[str], mirror: str = MIRROR) -> str:
    inputs = {"builder": "mmdebstrap", "suite": suite, "variant": VARIANT, "include": include,
              "mirror": mirror, "arch": "amd64"}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def parse_kind(kind: str, include: list[str]) -> tuple[str, list[str]]:
    suite = kind.partition(":")[2] or "bookworm"
    if suite not in SUITES:
        raise InvalidArgument(f"unknown Debian suite {suite!r}", hint=f"one of: {', '.join(SUITES)}")
    packages = sorted({p.strip() for item in include for p in item.split(",") if p.strip()})
    for package in packages:
        if not _PACKAGE.fullmatch(package):
            raise InvalidArgument(f"bad Debian package name {package!r}")
    return suite, packages


def default_tag(suite: str, packages: list[str], key: str) -> str:
    return f"debian:{suite}" if not packages else f"debian:{suite}-{key[:8]}"


def build(store: ImageStore, kind: str, include: list[str], tag: str | None, progress: Progress) -> Image:
    suite, packages = parse_kind(kind, include)
    key = build_key(suite, packages)
    tag = tag or default_tag(suite, packages, key)
    cached = next((i for i in store.list() if i.config.labels.get(KEY_LABEL) == key), None)
    if cached is not None:
        progress(f"cached: image {cached.short_id} was built from the same inputs")
        return store.tag(cached.id, tag)
    if shutil.which("mmdebstrap") is None:
        raise RuntimeFailure("mmdebstrap not found: debian images are built with it", hint=HINT_INSTALL)
    with store.staging() as stage:
        root = stage / "rootfs"
        run_mmdebstrap(suite, packages, root, progress)
        clean_dev(root)
        labels = {KEY_LABEL: key, "org.opencontainers.image.title": f"debian:{suite}",
                  "org.opencontainers.image.source": MIRROR}
        if packages:
            labels["io.isobox.build.include"] = ",".join(packages)
        config = ImageConfig(cmd=("bash",), labels=labels)
        created_by = f"mmdebstrap --variant={VARIANT}" + (f" --include={','.join(packages)}" if packages else "") \
            + f" {suite} {MIRROR}"
        return store.commit([root], config, tag, progress, history=[{"created": EPOCH, "created_by": created_by}])


def run_mmdebstrap(suite: str, packages: list[str], root: Path, progress: Progress) -> None:
    cmd = ["unshare", "--mount", "--propagation", "private", "--",
           "mmdebstrap", f"--variant={VARIANT}", "--mode=root", "--format=directory", "--verbose"]
    if packages:
        cmd.append("--include=" + ",".join(packages))
    cmd += [suite, str(root), MIRROR]
    progress("running " + " ".join(cmd[5:]))
    # (through the host's network namespace when the daemon runs in one of its own)
    proc = subprocess.Popen(hostns.wrap(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True)
    tail: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail = (tail + [line])[-20:]
            if line.startswith("I: ") or line.startswith("E: "):
                progress(line[3:])
        code = proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait()
        raise
    if code != 0:
        errors = [t for t in tail if t.startswith("E:")] or tail[-3:]
        raise RuntimeFailure(f"mmdebstrap failed (exit {code}): {' | '.join(errors)[:500]}",
                             hint=f"is {MIRROR} reachable? set ISOBOX_DEBIAN_MIRROR for another mirror")


def clean_dev(root: Path) -> None:
    dev = root / "dev"
    if dev.is_symlink() or not dev.is_dir():
        raise RuntimeFailure("mmdebstrap made no /dev directory")
    for entry in os.scandir(dev):
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path)
        else:
            path.unlink()
