"""`runc run` vs `isobox-runtime run` of the same OCI bundle running /bin/true, sequential starts.

    .venv/bin/python bench/oci_runtime.py [-n 40] [--warmup 3] [--seccomp]

The bundle is a busybox-static root with runc's default `runc spec` configuration (namespaces,
mounts, masked paths, 3 capabilities, no seccomp section), so both runtimes do the same work.
``--seccomp`` adds the seccomp section Podman would pass: containers-common's default profile
(/usr/share/containers/seccomp.json) for the bundle's capabilities on x86_64, in OCI form.
Runs alternate between the two runtimes so that drift on a noisy machine hits both alike.
Prints a table, then one JSON line: {"runc_p50_ms", "isobox_runtime_p50_ms", "ratio", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNTIME = str(Path(sys.executable).parent / "isobox-runtime")
BUSYBOX = "/bin/busybox"
PODMAN_SECCOMP = "/usr/share/containers/seccomp.json"


def podman_seccomp(caps: list[str]) -> dict[str, object]:
    """containers-common's profile as Podman hands it to the runtime: the rules that apply to
    x86_64 and ``caps``, without includes/excludes (as Podman's seccomp package does)."""
    doc = json.loads(Path(PODMAN_SECCOMP).read_text())
    arches = {"amd64", "x86_64", "x32", "386", "x86"}
    rules = []
    for rule in doc["syscalls"]:
        inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
        if inc.get("arches") and not arches & set(inc["arches"]):
            continue
        if inc.get("caps") and not set(inc["caps"]) <= set(caps):
            continue
        if exc.get("caps") and set(exc["caps"]) & set(caps):
            continue
        if exc.get("arches") and arches & set(exc["arches"]):
            continue
        if inc.get("minKernel") or exc.get("minKernel"):
            continue
        rules.append({k: v for k, v in rule.items() if k in ("names", "action", "args", "errnoRet")})
    return {"defaultAction": doc["defaultAction"], "defaultErrnoRet": doc.get("defaultErrnoRet"),
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"], "syscalls": rules}


def make_bundle(base: Path, seccomp: bool = False) -> Path:
    bundle = base / "bundle"
    rootfs = bundle / "rootfs"
    for d in ("bin", "proc", "sys", "dev", "etc"):
        (rootfs / d).mkdir(parents=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    (rootfs / "bin" / "true").symlink_to("busybox")
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = ["/bin/true"]
    if seccomp:
        config["linux"]["seccomp"] = podman_seccomp(config["process"]["capabilities"]["bounding"])
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def one_run(cmd: list[str], bundle: Path, root: Path, cid: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run([*cmd, "--root", str(root), "run", "--bundle", str(bundle), cid],
                          stdin=subprocess.DEVNULL, capture_output=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} run failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    return elapsed * 1000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=40, help="runs per runtime")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seccomp", action="store_true", help="with Podman's default seccomp profile")
    opts = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("runc") is None or not os.path.exists(BUSYBOX):
        print("needs root, runc and busybox-static", file=sys.stderr)
        return 2
    if opts.seccomp and not os.path.exists(PODMAN_SECCOMP):
        print(f"--seccomp needs {PODMAN_SECCOMP} (containers-common, installed with podman)", file=sys.stderr)
        return 2
    # What an installed runtime has: compiled bytecode (this shell may set PYTHONDONTWRITEBYTECODE).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(__file__).parents[1] / "isobox")],
                   check=False, capture_output=True)
    runtimes = {"runc": ["runc"], "isobox-runtime": [RUNTIME]}
    times: dict[str, list[float]] = {name: [] for name in runtimes}
    with tempfile.TemporaryDirectory(prefix="ibx-bench-oci-") as tmp:
        base = Path(tmp)
        bundle = make_bundle(base, opts.seccomp)
        for i in range(opts.warmup + opts.n):
            for name, cmd in runtimes.items():
                elapsed = one_run(cmd, bundle, base / f"root-{name}", f"b{i}")
                if i >= opts.warmup:
                    times[name].append(elapsed)
    print(f"{'runtime':<16}{'runs':>6}{'p50 ms':>10}{'p90 ms':>10}{'mean ms':>10}")
    for name, values in times.items():
        print(f"{name:<16}{len(values):>6}{percentile(values, 0.5):>10.1f}{percentile(values, 0.9):>10.1f}"
              f"{statistics.fmean(values):>10.1f}")
    runc_p50, ours_p50 = percentile(times["runc"], 0.5), percentile(times["isobox-runtime"], 0.5)
    result = {
        "runc_p50_ms": round(runc_p50, 2), "runc_p90_ms": round(percentile(times["runc"], 0.9), 2),
        "isobox_runtime_p50_ms": round(ours_p50, 2),
        "isobox_runtime_p90_ms": round(percentile(times["isobox-runtime"], 0.9), 2),
        "ratio": round(ours_p50 / runc_p50, 3), "runs": opts.n, "seccomp": opts.seccomp,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
