"""tlpipe: transfer-learning image classification as a reproducible DVC pipeline."""

from importlib import metadata

from tlpipe.errors import TlpipeError

try:
    __version__ = metadata.version("tlpipe")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"

__all__ = ["TlpipeError", "__version__", "load"]


def __getattr__(name: str):
    """`tlpipe.load("models/model.pt")`: a trained model file ready to classify images
    (tlpipe.use.predict.TrainedModel). Looked up on first use (PEP 562): every stage imports this
    package, and none of them uses the model API, so none loads torch or tlpipe/use/ through it
    (nor depends on that code in dvc.yaml)."""
    if name == "load":
        import importlib

        return importlib.import_module("tlpipe.use.predict").TrainedModel
    raise AttributeError(f"module 'tlpipe' has no attribute {name!r}")
