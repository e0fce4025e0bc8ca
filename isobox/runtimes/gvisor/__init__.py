"""The gVisor isolation level: the same image and spec, run by ``runsc`` as an OCI runtime."""
