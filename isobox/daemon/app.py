"""The FastAPI application: one router per resource, one error shape for every failure.

Every error answer is ``{"message", "hint", "kind"}`` (``IsoboxError.to_dict()``):

    IsoboxError subclass       -> its ``status`` (400, 404, 409, 500)
    RequestValidationError     -> 400, one line (bad query parameter, bad body)
    HTTPException (routing)    -> its status (404 unknown path, 405 wrong method)
    anything else              -> 500, logged with its traceback
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from isobox import __version__
from isobox.daemon import (
    routes_compare,
    routes_containers,
    routes_images,
    routes_networks,
    routes_system,
    routes_vm,
)
from isobox.daemon.schemas import ErrorResponse, describe_validation_error, openapi_components
from isobox.engine import Engine
from isobox.errors import IsoboxError

log = logging.getLogger("isobox.daemon")

KIND_BY_STATUS = {400: "InvalidArgument", 404: "NotFound", 405: "InvalidArgument", 409: "Conflict"}


def create_app(engine: Engine, *, manage_engine: bool = True) -> FastAPI:
    """The API around ``engine``.  With ``manage_engine`` (the daemon's case) the lifespan binds
    the engine to the server's loop and runs ``recover()`` at start-up and ``close()`` at the end."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_engine:
            # In the loop's own thread: recover() may register exit watchers on it.
            engine.bind_loop(asyncio.get_running_loop())
            engine.recover()
        try:
            yield
        finally:
            if manage_engine:
                engine.close()

    app = FastAPI(
        title="isobox",
        version=__version__,
        summary="Run workloads as containers, gVisor sandboxes or VMs from one spec.",
        lifespan=lifespan,
        responses={"default": {"model": ErrorResponse, "description": "error"}},
    )
    app.state.engine = engine
    app.include_router(routes_system.router)
    app.include_router(routes_containers.router)
    app.include_router(routes_images.router)
    app.include_router(routes_vm.router)
    app.include_router(routes_networks.router)
    app.include_router(routes_compare.router)
    app.add_exception_handler(IsoboxError, _isobox_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(CatchAllMiddleware)
    _install_openapi(app)
    return app


def error_body(message: str, hint: str | None, kind: str) -> dict[str, str | None]:
    return {"message": message, "hint": hint, "kind": kind}


async def _isobox_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, IsoboxError)
    if exc.status >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, exc.message)
    return JSONResponse(exc.to_dict(), status_code=exc.status)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message = describe_validation_error(list(exc.errors()))
    return JSONResponse(error_body(message, None, "InvalidArgument"), status_code=400)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = str(exc.detail)
    if exc.status_code in (404, 405):
        message = f"{message}: {request.method} {request.url.path}"
    kind = KIND_BY_STATUS.get(exc.status_code, "IsoboxError")
    return JSONResponse(error_body(message, None, kind), status_code=exc.status_code, headers=exc.headers)


class CatchAllMiddleware:
    """Unexpected exceptions: a 500 in the usual shape and one traceback in the log.

    (Starlette's ``exception_handler(Exception)`` answers too, but then re-raises, so the
    server logs the traceback a second time.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            log.exception("internal error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                return  # too late for a status; the server closes the connection
            body = error_body(f"internal error: {type(exc).__name__}: {exc}", "see the isoboxd log", "IsoboxError")
            await JSONResponse(body, status_code=500)(scope, receive, send)


def _install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes,
            )
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, component in openapi_components().items():
                schemas.setdefault(name, component)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
