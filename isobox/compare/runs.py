"""Compare runs: started by the daemon in a thread, followed by progress, stored as JSON.

Results live in ``<state root>/compare/<id>.json``; ``latest`` names the last finished one,
which ``advise`` reads.  One run at a time: two would measure each other.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from isobox import paths
from isobox.compare import claims, measure
from isobox.errors import Conflict, InvalidArgument, IsoboxError, NotFound

if TYPE_CHECKING:
    from isobox.engine import Engine

DEFAULT_REPETITIONS = 3
MAX_REPETITIONS = 50
DEFAULT_COMMAND = ["true"]


def results_dir() -> Path:
    return paths.state_root() / "compare"


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def load(run_id: str) -> dict[str, Any]:
    if run_id == "latest":
        try:
            run_id = (results_dir() / "latest").read_text().strip()
        except OSError:
            raise NotFound("no compare has finished on this host yet", hint="isobox compare busybox") from None
    if not run_id.isalnum():
        raise NotFound(f"no such compare run: {run_id}")
    try:
        return dict(json.loads((results_dir() / f"{run_id}.json").read_text()))
    except (OSError, ValueError):
        raise NotFound(f"no such compare run: {run_id}") from None


def levels_to_measure(engine: Engine, wanted: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """(levels to run, unavailable level -> why): every level the engine offers, in order."""
    known = ["container", "gvisor", "vm"]
    offered = [name for name in known if name in engine.runtimes] + [
        name for name in engine.runtimes if name not in known]
    unavailable = {name: "not part of this build of isobox yet" for name in known if name not in engine.runtimes}
    levels = []
    for name in offered:
        if wanted and name not in wanted:
            unavailable[name] = "not selected (--levels)"
            continue
        facts = engine.runtimes[name].host_facts()
        if facts.get("available") is False:
            why = str(facts.get("why") or "not available on this host")
            hint = facts.get("hint")
            unavailable[name] = f"{why} ({hint})" if hint else why
            continue
        levels.append(name)
    if wanted:
        unknown = [w for w in wanted if w not in known and w not in engine.runtimes and w != "native"]
        if unknown:
            raise InvalidArgument(f"unknown isolation level(s): {', '.join(unknown)}")
    return levels, unavailable


def host_summary() -> dict[str, Any]:
    from isobox import sysinfo

    accel, why = sysinfo.accelerator()
    info = sysinfo.host()
    return {**info, "accelerator": accel, "accelerator_detail": why}


def execute(engine: Engine, image: str, command: list[str] | None, repetitions: int,
            levels: list[str] | None = None, progress: Any = None) -> dict[str, Any]:
    """One whole compare, synchronously; ``progress(done, total, label)`` after each step."""
    if not 1 <= repetitions <= MAX_REPETITIONS:
        raise InvalidArgument(f"repetitions must be between 1 and {MAX_REPETITIONS}")
    command = list(command or DEFAULT_COMMAND)
    img = engine.image_store.resolve(image)
    _refuse_disk(image, img.disk)
    to_run, unavailable = levels_to_measure(engine, levels)
    total = (1 + len(to_run)) * (2 * repetitions + 2)
    done = 0

    def step(label: str) -> None:
        nonlocal done
        if progress is not None:
            progress(done, total, label)
        done += 1

    started = time.time()
    result: dict[str, Any] = {"image": image, "image_id": img.id, "command": command,
                              "repetitions": repetitions, "host": host_summary(), "levels": {},
                              "started_at": started}
    native_runner = measure.Native(img)
    try:
        native = measure.measure_level(native_runner, command, repetitions, None, step)
    finally:
        native_runner.close()
    result["levels"]["native"] = native
    for name in to_run:
        runner = measure.Level(engine, name, image)
        try:
            result["levels"][name] = measure.measure_level(runner, command, repetitions, native, step)
        except IsoboxError as exc:
            result["levels"][name] = {"available": False, "why": f"failed here: {exc.message}"}
        if name == "vm" and result["levels"][name].get("available"):
            result["levels"][name]["accelerator"] = result["host"]["accelerator"]
    for name, why in unavailable.items():
        result["levels"][name] = {"available": False, "why": why}
    result["finished_at"] = time.time()
    result["duration_s"] = round(result["finished_at"] - started, 1)
    result["claims"] = claims.evaluate(result)
    if progress is not None:
        progress(total, total, "done")
    return result


class CompareRuns:
    """The daemon's compare runs (one at a time), their progress and their stored results."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._active: dict[str, dict[str, Any]] = {}

    def start(self, image: str, command: list[str] | None, repetitions: int = DEFAULT_REPETITIONS,
              levels: list[str] | None = None) -> dict[str, Any]:
        _refuse_disk(image, self.engine.image_store.resolve(image).disk)  # refuse now, not in the thread
        if not 1 <= repetitions <= MAX_REPETITIONS:
            raise InvalidArgument(f"repetitions must be between 1 and {MAX_REPETITIONS}")
        with self._lock:
            if any(r["status"] == "running" for r in self._active.values()):
                raise Conflict("a compare is already running", hint="wait for it: two would measure each other")
            run_id = time.strftime("%Y%m%d%H%M%S") + secrets.token_hex(3)
            state = {"id": run_id, "status": "running", "done": 0, "total": 1, "step": "starting",
                     "image": image, "command": command or DEFAULT_COMMAND, "error": None}
            self._active[run_id] = state
        threading.Thread(target=self._run, args=(run_id, image, command, repetitions, levels),
                         name=f"compare-{run_id}", daemon=True).start()
        return dict(state)

    def _run(self, run_id: str, image: str, command: list[str] | None, repetitions: int,
             levels: list[str] | None) -> None:
        state = self._active[run_id]

        def progress(done: int, total: int, label: str) -> None:
            state.update(done=done, total=total, step=label)

        try:
            result = execute(self.engine, image, command, repetitions, levels, progress)
            result["id"] = run_id
            _write(results_dir() / f"{run_id}.json", result)
            (results_dir() / "latest").write_text(run_id)
            state["status"] = "finished"
        except IsoboxError as exc:
            state.update(status="failed", error=exc.message)
        except Exception as exc:  # noqa: BLE001 - reported through the run's status
            state.update(status="failed", error=f"{type(exc).__name__}: {exc}")

    def status(self, run_id: str) -> dict[str, Any]:
        state = self._active.get(run_id)
        if state is not None:
            out = dict(state)
            if state["status"] == "finished":
                out["result"] = load(run_id)
            return out
        result = load(run_id)
        return {"id": result.get("id", run_id), "status": "finished", "done": 1, "total": 1, "step": "done",
                "error": None, "result": result}

    def list(self) -> list[dict[str, Any]]:
        out = []
        if results_dir().is_dir():
            for path in sorted(results_dir().glob("*.json")):
                out.append({"id": path.stem, "status": "finished"})
        out.extend({"id": k, "status": v["status"]} for k, v in self._active.items() if v["status"] != "finished")
        return out


def _refuse_disk(ref: str, disk: dict[str, Any] | None) -> None:
    if disk:
        raise InvalidArgument(f"image {ref} is a VM disk image: compare runs images with layers",
                              hint="compare a container image, e.g. busybox")
