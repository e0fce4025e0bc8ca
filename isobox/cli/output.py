"""Docker-looking output: aligned tables, human durations, ``--format`` templates."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from isobox.units import format_size

TABLE_PADDING = 3  # docker's tabwriter padding


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *rows]:
        cells = [cell.ljust(widths[i] + TABLE_PADDING) for i, cell in enumerate(row[:-1])]
        lines.append(("".join(cells) + row[-1]).rstrip())
    return "\n".join(lines)


def human_duration(seconds: float) -> str:
    """go-units' HumanDuration, which docker uses for CREATED and STATUS."""
    secs = int(seconds)
    if secs < 1:
        return "Less than a second"
    if secs == 1:
        return "1 second"
    if secs < 60:
        return f"{secs} seconds"
    minutes = secs // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def ago(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return ""
    return f"{human_duration(max(0.0, (now or time.time()) - float(ts)))} ago"


def short_id(ident: str) -> str:
    return ident.split(":", 1)[-1][:12]


def truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def name_of(container: Mapping[str, Any]) -> str:
    names = container.get("Names") or container.get("Name") or ""
    if isinstance(names, list):
        names = ",".join(str(n).lstrip("/") for n in names)
    return str(names).lstrip("/")


def status_text(container: Mapping[str, Any], now: float | None = None) -> str:
    """The engine's human Status when it sends one, else built from State and ExitCode."""
    if container.get("Status"):
        return str(container["Status"])
    state = str(container.get("State") or "")
    if state == "running":
        return "Up"
    if state == "exited":
        return f"Exited ({container.get('ExitCode')})"
    return state.capitalize()


def ps_row(c: Mapping[str, Any], now: float, no_trunc: bool = False) -> dict[str, str]:
    """docker ps's --format fields, as strings."""
    command = str(c.get("Command") or "")
    return {
        "ID": str(c.get("Id", "")) if no_trunc else short_id(str(c.get("Id", ""))),
        "Image": str(c.get("Image", "")),
        "Command": json.dumps(command if no_trunc else truncate(command, 20), ensure_ascii=False),
        "CreatedAt": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(float(c.get("Created") or 0))),
        "RunningFor": ago(c.get("Created"), now),
        "Status": status_text(c, now),
        "State": str(c.get("State", "")),
        "Names": name_of(c),
        "Isolation": str(c.get("Isolation", "")),
    }


PS_COLUMNS = [("CONTAINER ID", "ID"), ("IMAGE", "Image"), ("COMMAND", "Command"), ("CREATED", "RunningFor"),
              ("STATUS", "Status"), ("ISOLATION", "Isolation"), ("NAMES", "Names")]


def ps_table(containers: Sequence[Mapping[str, Any]], now: float, no_trunc: bool = False) -> str:
    rows = [ps_row(c, now, no_trunc) for c in containers]
    return table([h for h, _ in PS_COLUMNS], [[r[k] for _, k in PS_COLUMNS] for r in rows])


def images_table(images: Sequence[Mapping[str, Any]], now: float) -> str:
    rows = []
    for img in images:
        tags = img.get("RepoTags") or ["<none>:<none>"]
        for tag in tags:
            repo, _, version = str(tag).rpartition(":")
            if not repo or "/" in version:
                repo, version = str(tag), "<none>"
            rows.append([repo, version, short_id(str(img.get("Id", ""))), ago(img.get("Created"), now),
                         format_size(float(img.get("Size") or 0))])
    return table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], rows)


def stats_row(s: Mapping[str, Any]) -> list[str]:
    usage, limit = s.get("memory_usage"), s.get("memory_limit")
    cpu = s.get("cpu_percent")
    mem = f"{format_size(float(usage or 0))} / {format_size(float(limit)) if limit else 'unlimited'}"
    mem_pct = f"{100.0 * usage / limit:.2f}%" if usage is not None and limit else "--"
    pids = s.get("pids_current")
    return [short_id(str(s.get("Id", ""))), name_of(s), f"{cpu:.2f}%" if isinstance(cpu, int | float) else "--",
            mem, mem_pct, "--" if pids is None else str(pids)]


def stats_table(stats: Sequence[Mapping[str, Any]]) -> str:
    headers = ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "PIDS"]
    return table(headers, [stats_row(s) for s in stats])


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=4, ensure_ascii=False)


# -- --format templates: the part of Go templates people put in scripts ---------------------------

_FIELD = re.compile(r"\{\{\s*(json\s+)?\.([A-Za-z0-9_.]*)\s*\}\}")


def render_template(template: str, obj: Any) -> str:
    """``{{.State.Status}}``, ``{{json .Config}}``, ``{{json .}}``; ``\\t`` and ``\\n`` escapes."""
    template = template.replace("\\t", "\t").replace("\\n", "\n")

    def value(match: re.Match[str]) -> str:
        found = lookup(obj, match.group(2))
        if match.group(1):
            return json.dumps(found, ensure_ascii=False)
        return go_string(found)

    return _FIELD.sub(value, template)


def lookup(obj: Any, path: str) -> Any:
    for part in [p for p in path.split(".") if p]:
        if not isinstance(obj, Mapping):
            return None
        if part in obj:
            obj = obj[part]
        else:
            obj = next((v for k, v in obj.items() if str(k).lower() == part.lower()), None)
    return obj


def go_string(value: Any) -> str:
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + " ".join(go_string(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_string(v)}" for k, v in value.items()) + "]"
    return str(value)


def format_rows(template: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """``--format`` for list commands: ``json`` (one array), ``table TEMPLATE`` or a template."""
    if template.startswith("table"):
        body = template[len("table"):].strip() or "{{.ID}}"
        fields = [m.group(2) for m in _FIELD.finditer(body)]
        headers = [re.sub(r"(?<=[a-z])(?=[A-Z])", " ", f.split(".")[-1]).upper() for f in fields]
        cells = [[go_string(lookup(r, f)) for f in fields] for r in rows]
        return table(headers, cells)
    return "\n".join(render_template(template, r) for r in rows)


def system_info_text(info: Mapping[str, Any]) -> str:
    """The host doctor as text: the engine's own renderer for its checks, then isobox's figures."""
    parts = []
    try:
        from isobox.sysinfo import render

        parts.append(render(dict(info)))
    except (ImportError, KeyError, TypeError, ValueError):
        parts.append(nested_text({k: v for k, v in info.items() if k != "isobox"}))
    own = info.get("isobox")
    if isinstance(own, Mapping):
        parts.append("isobox:\n" + nested_text(own, indent=2))
    return "\n\n".join(p for p in parts if p)


def nested_text(obj: Any, indent: int = 0) -> str:
    pad = " " * indent
    if isinstance(obj, Mapping):
        lines = []
        for key, value in obj.items():
            if isinstance(value, Mapping | list) and value:
                lines.append(f"{pad}{key}:")
                lines.append(nested_text(value, indent + 2))
            else:
                lines.append(f"{pad}{key}: {go_string(value) if value is not None else ''}".rstrip())
        return "\n".join(lines)
    if isinstance(obj, list):
        return "\n".join(f"{pad}- {json.dumps(v, ensure_ascii=False) if isinstance(v, Mapping) else go_string(v)}"
                         for v in obj)
    return f"{pad}{go_string(obj)}"
