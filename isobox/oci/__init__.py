"""isobox's container runtime behind the OCI runtime command line (``isobox-runtime``).

    bundle.py     config.json -> the runtime's ContainerConfig/ProcessConfig (strict: what is
                  not implemented is refused, never ignored)
    state.py      the state directory under --root and the spec's state document
    lifecycle.py  create/start/kill/delete/exec on top of the shared container set-up code
    cli.py        the command line runc and crun speak (what Podman/conmon call)
"""
