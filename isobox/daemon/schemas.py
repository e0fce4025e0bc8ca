"""Request and response bodies of the API.

The workload spec and the exec spec are stdlib dataclasses (the CLI imports them cheaply), so
the bodies that carry them are validated here in two steps:

1. pydantic, in JSON mode with ``strict=True, extra="forbid"``: wrong JSON types and unknown
   fields (at any depth) become a one-line 400.  JSON mode matters: in Python mode a strict
   model refuses a dict for a nested dataclass and a string for an enum.
2. the dataclass's own constructor (``WorkloadSpec.from_dict(...).validate()``), which stays
   the single authority on what a spec may say.

The same pydantic models give the OpenAPI document its schemas (see ``openapi_components``).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from isobox.engine import ExecSpec
from isobox.errors import InvalidArgument
from isobox.spec import WorkloadSpec

STRICT = ConfigDict(extra="forbid", strict=True)

M = TypeVar("M", bound=BaseModel)


class CreateContainerRequest(BaseModel):
    """``POST /containers``: start=false creates, start=true creates and starts."""

    model_config = STRICT
    spec: WorkloadSpec
    start: bool = False
    attach: bool = Field(False, description="with start: the workload waits for a client on AttachSocket")


class BuildImageRequest(BaseModel):
    model_config = STRICT
    kind: str = Field(description="image builder: busybox, debian:bookworm, debian:trixie")
    tag: str | None = None
    include: list[str] = Field(default_factory=list, description="extra Debian packages (debian images)")
    bootable: bool = Field(False, description="debian: a whole system on a firmware-bootable disk (a VM-only image)")


def model_from_dataclass(cls: type[Any], name: str) -> type[BaseModel]:
    """A strict pydantic model with the fields of a stdlib dataclass (for top-level bodies)."""
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            fields[f.name] = (hints[f.name], f.default)
        elif f.default_factory is not dataclasses.MISSING:
            fields[f.name] = (hints[f.name], Field(default_factory=f.default_factory))
        else:
            fields[f.name] = (hints[f.name], ...)
    return create_model(name, __config__=STRICT, __doc__=cls.__doc__, **fields)


ExecConfig = model_from_dataclass(ExecSpec, "ExecConfig")


class CreateResponse(BaseModel):
    Id: str
    Name: str
    AttachSocket: str | None = None
    Warnings: list[str] = []


class ExecResponse(BaseModel):
    Id: str
    AttachSocket: str


class WaitResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    StatusCode: int
    OOMKilled: bool = False
    Error: Any = None


class ErrorResponse(BaseModel):
    message: str
    hint: str | None = None
    kind: str = Field(description="IsoboxError subclass: InvalidArgument, NotFound, Conflict, RuntimeFailure")


def parse_body(model: type[M], raw: bytes) -> M:
    if not raw.strip():
        raise InvalidArgument("the request has no body: expected a JSON object")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidArgument(describe_validation_error(exc.errors(include_url=False))) from None


def parse_create_request(raw: bytes) -> tuple[WorkloadSpec, CreateContainerRequest]:
    req = parse_body(CreateContainerRequest, raw)
    # pydantic checked the types; from_dict() builds the spec the way every other caller does.
    spec = WorkloadSpec.from_dict(json.loads(raw)["spec"]).validate()
    return spec, req


def parse_exec_request(raw: bytes) -> ExecSpec:
    model = parse_body(ExecConfig, raw)
    spec = ExecSpec(**model.model_dump())
    if not spec.command:
        raise InvalidArgument("exec needs a command")
    return spec


def describe_validation_error(errors: typing.Sequence[Any]) -> str:
    """One line out of pydantic's or FastAPI's error list (the first error, and a count)."""
    if not errors:
        return "invalid request"
    err = errors[0]
    kind = err.get("type", "")
    loc = [str(p) for p in err.get("loc", ())]
    where = ""
    if loc and loc[0] in ("body", "query", "path", "header"):
        where = {"body": "", "query": "query parameter ", "path": "path parameter ", "header": "header "}[loc[0]]
        loc = loc[1:]
    name = ".".join(loc)
    if kind == "json_invalid":
        text = f"invalid JSON body: {err.get('ctx', {}).get('error', err.get('msg', ''))}"
    elif kind in ("extra_forbidden", "unexpected_keyword_argument"):
        text = f"unknown field {name!r}"
    elif kind in ("missing", "missing_keyword_argument", "missing_argument"):
        text = f"missing {where or 'field '}{name!r}"
    elif not name:
        text = f"invalid request body: {err.get('msg', '')}"
    else:
        text = f"invalid {where or 'value for '}{name!r}: {err.get('msg', '')}"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return text


def openapi_components() -> dict[str, Any]:
    """Schemas for the bodies the routes read themselves, keyed by component name."""
    components: dict[str, Any] = {}
    for model in (CreateContainerRequest, ExecConfig):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            components[name] = sub
        components[model.__name__] = schema
    for schema in components.values():
        # The nested dataclasses reject unknown fields too (extra="forbid" propagates): say so.
        if schema.get("type") == "object" and "properties" in schema:
            schema["additionalProperties"] = False
    return components


def json_body(component: str, description: str = "") -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its body itself."""
    body: dict[str, Any] = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{component}"}}},
    }
    if description:
        body["description"] = description
    return {"requestBody": body}
