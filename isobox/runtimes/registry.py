"""Which isolation levels this build of isobox offers.

A level is a module with a Runtime class; the engine asks here instead of importing each one,
so a new level plugs in by adding a line to LEVELS.  A level whose host requirements are
missing (no runsc, no QEMU) still registers: its ``validate`` refuses with a hint, and
``host_facts`` tells `system info` why.
"""

from __future__ import annotations

import importlib

from isobox.runtimes.base import Runtime

# isolation name -> (module, class)
LEVELS: dict[str, tuple[str, str]] = {
    "container": ("isobox.runtimes.container.runtime", "ContainerRuntime"),
    "gvisor": ("isobox.runtimes.gvisor.runtime", "GvisorRuntime"),
    "vm": ("isobox.runtimes.vm.runtime", "VmRuntime"),
}


def load_runtimes() -> dict[str, Runtime]:
    runtimes: dict[str, Runtime] = {}
    for name, (module_name, class_name) in LEVELS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module_name.startswith(exc.name):
                continue  # that level is not part of this build yet
            raise
        runtimes[name] = getattr(module, class_name)()
    return runtimes
