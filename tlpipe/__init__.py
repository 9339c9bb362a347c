"""tlpipe: transfer-learning image classification as a reproducible DVC pipeline."""

from importlib import metadata

from tlpipe.errors import TlpipeError

try:
    __version__ = metadata.version("tlpipe")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"

__all__ = ["TlpipeError", "__version__", "load"]


def load(path="models/model.pt", device="auto"):
    """A trained model file, ready to classify images: `tlpipe.load("models/model.pt").predict([...])`
    (tlpipe.use.predict.TrainedModel; torch loads here, not on `import tlpipe`)."""
    from tlpipe.use.predict import TrainedModel

    return TrainedModel(path, device)
