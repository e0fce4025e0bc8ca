"""compare's own cost: per measured run, the time compare spends around the interval it reports.

For each row, one measured run is timed twice: ``wall`` around the whole ``run()`` call of
compare's runner (spec, engine start, waiting, reading the log, parsing the stamps, removing
the workload) and ``measured``, the start-to-exit interval compare reports for it.  The
overhead is ``wall - measured`` and the ratio ``overhead / measured``: how much the tool costs
against the thing it measures.  Removal is part of the overhead (compare pays it per run), the
exit it waits for is not.

Rows: native (``true`` from the image's layer), each engine level given with --levels
(container by default; gvisor when runsc is installed).  In-process engine, private roots.

Usage: .venv/bin/python bench/compare_self.py [--reps N] [--levels container,gvisor]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

from common import Summary, bench_dir, fmt, json_line, print_facts, remove_cgroup_parent, table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--levels", default="container,gvisor" if shutil.which("runsc") else "container")
    args = parser.parse_args()
    print_facts("compare_self: compare's own overhead per measured run")
    parent = f"ibx-bench-cmp-{os.getpid()}"
    with bench_dir("ibx-cmp") as base:
        os.environ.update(ISOBOX_ROOT=str(base / "root"), ISOBOX_RUN=str(base / "run"),
                          ISOBOX_CGROUP_PARENT=parent)
        from isobox.compare import measure
        from isobox.engine import Engine

        engine = Engine()
        try:
            engine.build_image("busybox")
            image = engine.image_store.resolve("busybox")
            runners: list[measure.Native | measure.Level] = [measure.Native(image)]
            runners += [measure.Level(engine, name, "busybox") for name in args.levels.split(",") if name]
            rows, figures = [], {}
            for runner in runners:
                runner.run(["true"])  # warm-up
                walls, measured = [], []
                for _ in range(args.reps):
                    t0 = time.perf_counter()
                    sample = runner.run(["true"])
                    walls.append(time.perf_counter() - t0)
                    measured.append(sample.exit_s)
                if isinstance(runner, measure.Native):
                    runner.close()
                over = [w - m for w, m in zip(walls, measured, strict=True)]
                w, m, o = Summary.of(walls), Summary.of(measured), Summary.of(over)
                ratio = o.p50 / m.p50 if m.p50 else None
                rows.append([runner.name, fmt(m.p50 * 1e3, 2), fmt(w.p50 * 1e3, 2), fmt(o.p50 * 1e3, 2),
                             fmt(o.p90 * 1e3, 2), fmt(ratio, 2) if ratio is not None else "-"])
                figures[runner.name] = {"measured_p50_ms": round(m.p50 * 1e3, 3), "wall_p50_ms": round(w.p50 * 1e3, 3),
                                        "overhead_p50_ms": round(o.p50 * 1e3, 3),
                                        "overhead_p90_ms": round(o.p90 * 1e3, 3),
                                        "overhead_ratio": None if ratio is None else round(ratio, 3)}
        finally:
            engine.close()
            remove_cgroup_parent(parent)
    print(table(["row", "measured p50 ms", "wall p50 ms", "overhead p50 ms", "overhead p90 ms",
                 "overhead / measured"], rows))
    print(json_line({"bench": "compare_self", "reps": args.reps, "rows": figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
