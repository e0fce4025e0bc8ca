"""The VM isolation level: the same images as QEMU microVMs with isobox's own guest kernel and init."""
