"""The ``isobox`` CLI: a thin client of isoboxd.

    main.py      main(): error reporting, exit codes (Docker's: 125 for isobox's own errors)
    parser.py    the argparse tree (only the verb at hand is built: argparse is slow to build)
    commands.py  one function per verb, each a few API calls
    runflags.py  run/create flags
    runspec.py   run/create flags -> the workload spec (JSON, or a validated WorkloadSpec)
    client.py    HTTP/1.1 over the daemon's unix socket; the daemon's auto-start
    session.py   attached stdin/stdout/stderr, tty and signals for run, start -a and exec
    output.py    tables, human durations, --format templates

Start-up time is part of every ``isobox run``: nothing here imports FastAPI, pydantic, uvicorn,
httpx or rich (rich only inside ``image build``), nor the spec's dataclasses (run/create send
the spec as JSON and the daemon validates it).
"""
