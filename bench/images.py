"""Image store costs: loading an archive, preparing a container root, building debian:bookworm.

Rows:

  load isobox    ``archive.load`` of one OCI archive into a fresh store (verify every digest,
                 unpack every layer safely into the layer cache, rename into place)
  load podman    ``podman load -i`` of the same archive into fresh private storage (overlay
                 driver, falls back to vfs), the peer
  root prepare   what the runtime does per container before pivot_root: make upper/work dirs and
                 mount overlayfs with the image's layers as lowerdirs (unmount untimed); bar p50 <= 2 ms
  debian cold    ``image build debian:bookworm`` into an empty store (mmdebstrap from the mirror)
  debian cached  the same build again: found by its build key, only tagged
  VM root disk   ``vmdisk.ensure_base`` of debian:bookworm (busybox when the bench did not build
                 debian): cold = the cached ext4 base removed first (overlay mount of the layers,
                 ``mkfs.ext4 -d``, rename), cached = the base already there; the disks go to a
                 private ``ISOBOX_ROOT`` under the bench directory, never the host's cache.
                 With ``--vmdisk-only`` (a quick run: no mmdebstrap, no loads) debian:bookworm is
                 taken from the host's store when it is there (read only: index, blobs, layers)

The archive is the debian:bookworm image saved by isobox (``--archive busybox`` for a quick run).
Repetitions of the load rows are interleaved.  The last line of output is one JSON object.

Usage: .venv/bin/python bench/images.py [--reps N] [--mounts N] [--archive debian|busybox] [--no-debian]
                                       [--vmdisk-only]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import REPO, Summary, bench_dir, fmt, json_line, print_facts, ratio, sigterm_as_interrupt, table

sys.path.insert(0, str(REPO))

from isobox import paths  # noqa: E402
from isobox.images import ImageStore, archive, debian, vmdisk  # noqa: E402
from isobox.images.store import REF_NAME, Image, ImageConfig  # noqa: E402
from isobox.runtimes.container import syscalls as sc  # noqa: E402
from isobox.state import StateStore  # noqa: E402


def quiet(_: str) -> None:
    pass


@contextlib.contextmanager
def fresh_store(base: Path, name: str) -> Iterator[ImageStore]:
    root = base / name
    db = StateStore(root / "db")
    try:
        yield ImageStore(db, root / "images")
    finally:
        db.close()
        shutil.rmtree(root, ignore_errors=True)


def podman_cmd(base: Path, driver: str) -> list[str]:
    return ["podman", "--root", str(base / "proot"), "--runroot", str(base / "prun"), "--runtime", "runc",
            "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--storage-driver", driver]


def podman_load(base: Path, archive_path: Path, driver: str) -> float:
    cmd = podman_cmd(base, driver)
    started = time.perf_counter()
    subprocess.run([*cmd, "load", "-q", "-i", str(archive_path)], check=True, capture_output=True)
    elapsed = time.perf_counter() - started
    subprocess.run([*cmd, "system", "reset", "-f"], capture_output=True, check=False)
    shutil.rmtree(base / "proot", ignore_errors=True)
    shutil.rmtree(base / "prun", ignore_errors=True)
    return elapsed


def podman_driver(base: Path, archive_path: Path) -> str | None:
    if shutil.which("podman") is None:
        return None
    for driver in ("overlay", "vfs"):
        with contextlib.suppress(subprocess.CalledProcessError):
            podman_load(base, archive_path, driver)
            return driver
    return None


def isobox_load(base: Path, archive_path: Path) -> float:
    with fresh_store(base, "load") as store:
        started = time.perf_counter()
        archive.load(store, archive_path, quiet)
        return time.perf_counter() - started


def root_prepare(store: ImageStore, ref: str, base: Path, count: int) -> list[float]:
    image = store.resolve(ref)
    lower = ":".join(str(p) for p in reversed(image.layers))
    times = []
    target = base / "mnt"
    target.mkdir()
    for n in range(count):
        upper, work = base / f"c{n}" / "upper", base / f"c{n}" / "work"
        started = time.perf_counter()
        upper.mkdir(parents=True)
        work.mkdir()
        sc.mount("overlay", str(target), "overlay", 0, f"lowerdir={lower},upperdir={upper},workdir={work}")
        times.append(time.perf_counter() - started)
        sc.umount2(str(target))
        shutil.rmtree(base / f"c{n}")
    return times


def host_image(ref: str) -> Image | None:
    """``ref`` from the host's image store, read without its database or lock: index.json, the
    manifest and config blobs, the unpacked layer dirs.  None when it is not there."""
    root = paths.images_dir()
    try:
        index = json.loads((root / "index.json").read_text())
        desc = next(m for m in index["manifests"] if (m.get("annotations") or {}).get(REF_NAME) == ref)
        blobs = root / "blobs" / "sha256"
        manifest = json.loads((blobs / desc["digest"].removeprefix("sha256:")).read_bytes())
        config_digest = manifest["config"]["digest"]
        config = json.loads((blobs / config_digest.removeprefix("sha256:")).read_bytes())
        layers = tuple(root / "layers" / d.removeprefix("sha256:") for d in config["rootfs"]["diff_ids"])
    except (OSError, ValueError, KeyError, StopIteration):
        return None
    if not layers or not all(p.is_dir() for p in layers):
        return None
    return Image(id=config_digest, tags=(ref,), config=ImageConfig(), layers=layers, size=0, created=0.0)


def vm_root_disk(image: Image, ref: str, base: Path, reps: int, cached_reps: int = 50) -> dict[str, Any]:
    """Cold and cached ``vmdisk.ensure_base`` of ``image``, with the disks under the bench dir."""
    saved = os.environ.get("ISOBOX_ROOT")
    os.environ["ISOBOX_ROOT"] = str(base / "vmstate")
    try:
        cold = []
        for _ in range(max(1, reps)):
            vmdisk.base_path(image).unlink(missing_ok=True)
            started = time.perf_counter()
            path = vmdisk.ensure_base(image)
            cold.append(time.perf_counter() - started)
        cached = []
        for _ in range(cached_reps):
            started = time.perf_counter()
            vmdisk.ensure_base(image)
            cached.append(time.perf_counter() - started)
        disk_bytes = path.stat().st_blocks * 512
    finally:
        vmdisk.remove_bases()
        if saved is None:
            os.environ.pop("ISOBOX_ROOT", None)
        else:
            os.environ["ISOBOX_ROOT"] = saved
    return {"image": ref, "cold": Summary.of(cold), "cached": Summary.of(cached), "bytes": disk_bytes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3, help="loads per tool")
    parser.add_argument("--mounts", type=int, default=200, help="root prepares")
    parser.add_argument("--archive", choices=("debian", "busybox"), default="debian")
    parser.add_argument("--no-debian", action="store_true", help="skip the mmdebstrap rows (and use busybox)")
    parser.add_argument("--vmdisk-only", action="store_true",
                        help="only the VM root disk row (debian:bookworm unless --no-debian, else busybox)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/images.py needs root (mounts, layer owners)", file=sys.stderr)
        return 2
    sigterm_as_interrupt()
    print_facts("isobox image store")
    results: dict[str, Any] = {"bench": "images"}
    rows = []
    use_debian = not args.no_debian and not args.vmdisk_only and shutil.which("mmdebstrap") is not None
    with bench_dir("ibx-img") as base, fresh_store(base, "main") as store:
        if use_debian:
            started = time.perf_counter()
            debian.build(store, "debian:bookworm", [], None, quiet)
            cold = time.perf_counter() - started
            started = time.perf_counter()
            debian.build(store, "debian:bookworm", [], None, quiet)
            cached = time.perf_counter() - started
            results.update(debian_cold_s=cold, debian_cached_s=cached)
            rows += [["debian cold (mmdebstrap)", fmt(cold * 1000, 0), "", "1"],
                     ["debian cached", fmt(cached * 1000, 1), "", fmt(ratio(cached, cold), 4)]]
        store.build_busybox()
        disk_ref = "debian:bookworm" if use_debian else "busybox"
        disk_image = store.resolve(disk_ref)
        if args.vmdisk_only and not args.no_debian and (found := host_image("debian:bookworm")) is not None:
            disk_ref, disk_image = "debian:bookworm (host store)", found
        disk = vm_root_disk(disk_image, disk_ref, base, args.reps)
        results.update(vm_root_disk_image=disk_ref, vm_root_disk_cold_p50_ms=disk["cold"].p50 * 1000,
                       vm_root_disk_cached_p50_ms=disk["cached"].p50 * 1000, vm_root_disk_bytes=disk["bytes"])
        rows += [[f"VM root disk creation, cold ({disk_ref}, {disk['bytes'] >> 20} MiB ext4)",
                  fmt(disk["cold"].p50 * 1000, 0), fmt(disk["cold"].p90 * 1000, 0), "1"],
                 ["VM root disk creation, cached", fmt(disk["cached"].p50 * 1000, 3), fmt(disk["cached"].p90 * 1000, 3),
                  fmt(ratio(disk["cached"].p50, disk["cold"].p50), 5)]]
        if args.vmdisk_only:
            print(table(["what", "p50 ms", "p90 ms", "ratio"], rows))
            print(json_line(results))
            return 0
        ref = "debian:bookworm" if use_debian and args.archive == "debian" else "busybox"
        archive_path = base / "image.tar"
        archive.save(store, ref, archive_path, quiet)
        results["archive"] = {"image": ref, "bytes": archive_path.stat().st_size}

        driver = podman_driver(base, archive_path)
        ours, theirs = [], []
        for _ in range(args.reps):
            ours.append(isobox_load(base, archive_path))
            if driver:
                theirs.append(podman_load(base, archive_path, driver))
        s_ours, s_theirs = Summary.of(ours), Summary.of(theirs)
        results.update(load_isobox_p50_s=s_ours.p50, load_podman_p50_s=s_theirs.p50 if theirs else None,
                       podman_driver=driver, load_ratio=ratio(s_ours.p50, s_theirs.p50) if theirs else None)
        rows.append([f"load isobox ({ref}, {archive_path.stat().st_size >> 20} MiB)", fmt(s_ours.p50 * 1000, 0),
                     fmt(s_ours.p90 * 1000, 0), fmt(ratio(s_ours.p50, s_theirs.p50) if theirs else None, 2)])
        if theirs:
            rows.append([f"load podman ({driver})", fmt(s_theirs.p50 * 1000, 0), fmt(s_theirs.p90 * 1000, 0), "1"])

        prep = Summary.of(root_prepare(store, ref, base, args.mounts))
        results.update(root_prepare_p50_ms=prep.p50 * 1000, root_prepare_p90_ms=prep.p90 * 1000,
                       root_prepare_bar_ms=2.0, root_prepare_ok=prep.p50 * 1000 <= 2.0,
                       layers=len(store.resolve(ref).layers))
        rows.append([f"root prepare (overlay, {results['layers']} layer(s))", fmt(prep.p50 * 1000, 3),
                     fmt(prep.p90 * 1000, 3), ""])
    print(table(["what", "p50 ms", "p90 ms", "ratio"], rows))
    print(json_line(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
