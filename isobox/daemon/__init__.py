"""isoboxd: the REST daemon in front of the engine.

    server.py             isoboxd's main(): the socket, the pid file, uvicorn
    app.py                create_app(engine): error handlers, OpenAPI, routers
    schemas.py            strict request bodies built from the stdlib dataclasses
    routes_containers.py  /containers...
    routes_images.py      /images...
    routes_system.py      /_ping, /version, /system/info

This package's ``__init__`` stays import-free: the CLI reads the constant below.
"""

from __future__ import annotations

# isoboxd's exit status when another daemon already serves (or is starting on) its socket; the
# CLI's auto-start treats it as "someone else won the race" and keeps waiting for /_ping.
EXIT_ALREADY_RUNNING = 75

API_VERSION = "1.0"
