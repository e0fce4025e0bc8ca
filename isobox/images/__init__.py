"""Images: references, the store, and the builders that fill it.

``ImageStore`` is the interface the engine uses (resolve, list, remove, build); the OCI layout,
archives and Dockerfile builds of the images issue grow behind it.
"""

from isobox.images.refs import Reference, normalize, parse
from isobox.images.store import Image, ImageConfig, ImageStore

__all__ = ["Image", "ImageConfig", "ImageStore", "Reference", "normalize", "parse"]
