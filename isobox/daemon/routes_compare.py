"""``/compare`` and ``/advise``: measure every isolation level on this host, recommend one.

    POST /compare            start a run (one at a time)  -> {"id", "status", "done", "total", "step"}
    GET  /compare            the runs this host has kept
    GET  /compare/{id}       its progress; with "result" once finished ({id} may be "latest")
    POST /advise             a level for the given needs, from the latest finished compare
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from isobox.compare.runs import DEFAULT_REPETITIONS, CompareRuns, load
from isobox.daemon.deps import EngineDep

router = APIRouter(tags=["compare"])
STRICT = ConfigDict(extra="forbid")


class CompareRequest(BaseModel):
    model_config = STRICT
    image: str = Field(description="image to run at every level, e.g. busybox")
    command: list[str] | None = Field(None, description="workload timed to its exit (default: true)")
    repetitions: int = Field(DEFAULT_REPETITIONS, description="runs per measurement and level")
    levels: list[str] | None = Field(None, description="a subset of container, gvisor, vm (default: all)")


class AdviseRequest(BaseModel):
    model_config = STRICT
    untrusted: bool = False
    other_kernel: bool = False
    instances: int = 1
    start_budget_ms: float | None = None
    pattern: str = Field("long-running", description="long-running or bursty")


def _runs(request: Request, engine: Any) -> CompareRuns:
    runs: CompareRuns | None = getattr(request.app.state, "compare_runs", None)
    if runs is None:
        runs = request.app.state.compare_runs = CompareRuns(engine)
    return runs


@router.post("/compare", status_code=202)
def start_compare(body: CompareRequest, request: Request, engine: EngineDep) -> dict[str, Any]:
    """Start measuring; follow it with GET /compare/{id}."""
    return _runs(request, engine).start(body.image, body.command, body.repetitions, body.levels)


@router.get("/compare")
def list_compares(request: Request, engine: EngineDep) -> list[dict[str, Any]]:
    return _runs(request, engine).list()


@router.get("/compare/{run_id}")
def get_compare(run_id: str, request: Request, engine: EngineDep) -> dict[str, Any]:
    return _runs(request, engine).status(run_id)


@router.post("/advise")
def advise(body: AdviseRequest) -> dict[str, Any]:
    """The recommendation and its reasons, backed by the latest compare's figures (404 if none)."""
    from isobox.compare.advise import Needs
    from isobox.compare.advise import advise as decide

    result = load("latest")
    advice = decide(Needs(**body.model_dump()), result)
    return {**advice.to_dict(), "compare_id": result.get("id")}
