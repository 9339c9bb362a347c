"""tlpipe: transfer-learning image classification as a reproducible DVC pipeline."""

from importlib import metadata

from tlpipe.errors import TlpipeError

try:
    __version__ = metadata.version("tlpipe")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"

__all__ = ["TlpipeError", "__version__"]
