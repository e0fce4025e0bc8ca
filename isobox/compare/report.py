"""A compare result as a terminal table (plain text) and as a self-contained HTML page with
inline SVG bar charts (no script, no CDN: it opens offline and prints)."""

from __future__ import annotations

import html
from typing import Any

ORDER = ("native", "container", "gvisor", "vm")
VERDICT = {True: "holds", False: "does not hold", None: "cannot tell"}


def _levels(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    levels = result.get("levels", {})
    names = [n for n in ORDER if n in levels] + [n for n in levels if n not in ORDER]
    return [(n, levels[n]) for n in names]


def _ms(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _ratio(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _mib(value: Any) -> str:
    return "-" if value is None else f"{value / (1 << 20):.1f}"


def rows(result: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(metric, one cell per level) -- shared by the text and HTML tables."""
    lv = [v for _, v in _levels(result)]

    def cells(fn: Any) -> list[str]:
        return [fn(v) if v.get("available") else "n/a" for v in lv]

    facts = lambda v, k: str((v.get("facts") or {}).get(k, "-"))  # noqa: E731
    out = [
        ("start to first instruction p50 / p90 (ms)",
         cells(lambda v: f"{_ms(v['start_first_ms']['p50'])} / {_ms(v['start_first_ms']['p90'])}")),
        ("start to exit p50 / p90 (ms)",
         cells(lambda v: f"{_ms(v['start_exit_ms']['p50'])} / {_ms(v['start_exit_ms']['p90'])}")),
        ("host memory, idle workload (MiB)", cells(lambda v: _mib(v.get("memory_bytes")))),
        ("memory added by the isolation (MiB)", cells(lambda v: _mib(v.get("memory_added_bytes")))),
        ("CPU-bound, time vs native", cells(lambda v: _ratio(v["ratios"].get("cpu")))),
        ("system-call loop, time vs native", cells(lambda v: _ratio(v["ratios"].get("syscall")))),
        ("file I/O, time vs native", cells(lambda v: _ratio(v["ratios"].get("io")))),
        ("kernel", cells(lambda v: facts(v, "kernel"))),
        ("syscalls reachable", cells(lambda v: facts(v, "syscalls"))),
        ("capabilities held", cells(lambda v: facts(v, "capabilities"))),
    ]
    from isobox.compare.workloads import PROBES

    for probe, text in PROBES.items():
        out.append((f"escape probe: {text}",
                    cells(lambda v, p=probe: str(((v.get("facts") or {}).get("probes") or {}).get(p, "-")))))
    return out


def text(result: dict[str, Any]) -> str:
    names = [n for n, _ in _levels(result)]
    table = rows(result)
    width0 = max(len(m) for m, _ in table)
    widths = [max(len(names[i]), *(min(len(c[i]), 44) for _, c in table)) for i in range(len(names))]

    def line(first: str, cols: list[str]) -> str:
        return "  ".join([first.ljust(width0), *(c[:44].ljust(w) for c, w in zip(cols, widths, strict=True))]).rstrip()

    host = result.get("host", {})
    out = [f"isobox compare {result.get('image')} -- {' '.join(result.get('command', []))}   "
           f"({result.get('repetitions')} repetitions, {result.get('duration_s', '?')} s; host kernel "
           f"{host.get('kernel')}, {host.get('cpus')} CPUs, VMs: {str(host.get('accelerator', '?')).upper()})",
           "", line("", names), line("-" * width0, ["-" * w for w in widths])]
    out += [line(metric, cells) for metric, cells in table]
    missing = [(n, v.get("why")) for n, v in _levels(result) if not v.get("available")]
    if missing:
        out += ["", "Not measured:"] + [f"  {n}: {why}" for n, why in missing]
    out += ["", "The usual claims, on this host:"]
    for claim in result.get("claims", []):
        out.append(f"  [{VERDICT[claim['holds']]}] {claim['claim']}: {claim['evidence']}")
    return "\n".join(out)


# -- HTML -------------------------------------------------------------------------------------------

COLORS = {"native": "#6b7280", "container": "#2563eb", "gvisor": "#16a34a", "vm": "#d97706"}


def _bar_chart(title: str, unit: str, values: list[tuple[str, float | None]]) -> str:
    shown = [(n, v) for n, v in values if v is not None]
    if not shown:
        return ""
    top = max(v for _, v in shown) or 1.0
    bar_h, gap, left, width = 22, 8, 90, 420
    height = len(shown) * (bar_h + gap) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}" height="{height}" '
             f'role="img" aria-label="{html.escape(title)}">',
             f'<text x="0" y="14" font-size="13" font-weight="bold">{html.escape(title)}</text>']
    for i, (name, value) in enumerate(shown):
        y = 24 + i * (bar_h + gap)
        w = max(1.0, width * value / top)
        parts.append(f'<text x="0" y="{y + 15}" font-size="12">{html.escape(name)}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" '
                     f'fill="{COLORS.get(name, "#7c3aed")}"/>')
        parts.append(f'<text x="{left + w + 4:.1f}" y="{y + 15}" font-size="12">{value:.3g} {unit}</text>')
    parts.append("</svg>")
    return "".join(parts)


def html_page(result: dict[str, Any]) -> str:
    levels = _levels(result)
    avail = [(n, v) for n, v in levels if v.get("available")]

    def series(fn: Any) -> list[tuple[str, float | None]]:
        out = []
        for name, v in avail:
            try:
                out.append((name, fn(v)))
            except (KeyError, TypeError):
                out.append((name, None))
        return out

    charts = [
        _bar_chart("Start to exit, p50", "ms", series(lambda v: v["start_exit_ms"]["p50"])),
        _bar_chart("Start to first instruction, p50", "ms", series(lambda v: v["start_first_ms"]["p50"])),
        _bar_chart("Host memory added by the isolation", "MiB",
                   series(lambda v: (v["memory_added_bytes"] or 0) / (1 << 20))),
        _bar_chart("CPU-bound work, time vs native", "x", series(lambda v: v["ratios"]["cpu"])),
        _bar_chart("System-call loop, time vs native", "x", series(lambda v: v["ratios"]["syscall"])),
        _bar_chart("File I/O, time vs native", "x", series(lambda v: v["ratios"]["io"])),
    ]
    names = [n for n, _ in levels]
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = "".join("<tr><th>" + html.escape(m) + "</th>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                   + "</tr>" for m, cells in rows(result))
    claims = "".join(f'<li class="{VERDICT[c["holds"]].replace(" ", "-")}"><b>{VERDICT[c["holds"]]}</b>: '
                     f'{html.escape(c["claim"])} &mdash; {html.escape(c["evidence"])}</li>'
                     for c in result.get("claims", []))
    missing = "".join(f"<li>{html.escape(n)}: {html.escape(str(v.get('why')))}</li>"
                      for n, v in levels if not v.get("available"))
    host = result.get("host", {})
    title = f"isobox compare: {result.get('image')}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #111; }}
table {{ border-collapse: collapse; margin: 1em 0; }} th, td {{ border: 1px solid #ddd; padding: 4px 8px;
text-align: left; font-size: 13px; }} thead th {{ background: #f3f4f6; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 24px; }} .holds b {{ color: #15803d; }}
.does-not-hold b {{ color: #b91c1c; }} .cannot-tell b {{ color: #6b7280; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Command <code>{html.escape(' '.join(result.get('command', [])))}</code>, {result.get('repetitions')} repetitions,
{result.get('duration_s', '?')} s. Host: {html.escape(str(host.get('os')))}, kernel {html.escape(str(host.get('kernel')))},
{host.get('cpus')} CPUs; VMs run under {html.escape(str(host.get('accelerator', '?')).upper())}
({html.escape(str(host.get('accelerator_detail', '')))}).</p>
<h2>The usual claims, on this host</h2><ul>{claims}</ul>
<h2>Charts</h2><div class="charts">{''.join(c for c in charts if c)}</div>
<h2>All figures</h2><table><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>
{f'<h2>Not measured</h2><ul>{missing}</ul>' if missing else ''}
<p>Times are wall-clock, stamped on the host as each phase's marker arrives; ratios are the level's p50
over native's p50 from the same run (higher is slower).</p>
</body></html>
"""
