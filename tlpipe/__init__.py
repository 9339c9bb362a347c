"""tlpipe: transfer-learning image classification as a reproducible DVC pipeline."""

from tlpipe.errors import TlpipeError

__all__ = ["TlpipeError"]
