"""`isobox compare` and `advise` end to end, kept short: one repetition, the container level."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Isobox

pytestmark = pytest.mark.root


def test_compare_json_html_then_advise(isobox: Isobox, tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    proc = isobox.cli("compare", "-n", "1", "--levels", "container", "--json", "--html", str(html),
                      "busybox", "--", "echo", "hi", timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    native, container = result["levels"]["native"], result["levels"]["container"]
    assert native["exit_code"] == 0 and container["exit_code"] == 0
    assert container["start_exit_ms"]["p50"] > 0 and container["ratios"]["cpu"] > 0
    assert container["facts"]["kernel_shared"] is True
    assert container["facts"]["probes"]["mount"] == "blocked"
    assert container["facts"]["probes"]["hostpids"] == "blocked"
    assert "allow-list" in container["facts"]["syscalls"]
    assert {"gvisor", "vm"} <= set(result["levels"])  # every level is listed, measured or not
    assert any(c["claim"] == "containers start in milliseconds" for c in result["claims"])
    assert "<svg" in html.read_text()

    advice = isobox.cli("advise", "--json", check=True)
    assert json.loads(advice.stdout)["level"] == "container"
    assert json.loads(advice.stdout)["compare_id"] == result["id"]
    untrusted = json.loads(isobox.cli("advise", "--untrusted", "--json", check=True).stdout)
    assert untrusted["level"] in ("gvisor", "vm", "container")
    assert untrusted["rule"].startswith("2")


def test_compare_refuses_an_unknown_image(isobox: Isobox) -> None:
    proc = isobox.cli("compare", "no-such-image")
    assert proc.returncode == 125
