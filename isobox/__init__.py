"""isobox: one image, one spec, one command — container, gVisor sandbox or VM."""

__version__ = "0.1.0"
