"""`tlpipe export`: models/model.pt as TorchScript or ONNX that outputs class probabilities and the
decision under the model's rule (baked into the graph), checked against PyTorch on the test split,
with the preprocessing and the rule written beside it as JSON."""

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tlpipe.atomic import atomic_path, refuse_overwriting_inputs
from tlpipe.data.cache import load_split
from tlpipe.errors import TlpipeError
from tlpipe.model.decision import threshold_of
from tlpipe.model.modelfile import load_model
from tlpipe.runtime import batches, to_float_images

TOLERANCE = 1e-4
FORMATS = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}


class Decided(nn.Module):
    """(N, 3, H, W) float RGB in [0, 1] -> ((N, classes) probabilities, (N,) int64 class decided by
    the rule: argmax of log-probability + offsets); normalisation inside."""

    def __init__(self, classifier: nn.Module, offsets: list[float]):
        super().__init__()
        self.classifier = classifier
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.float32).view(1, -1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(images)
        return torch.softmax(logits, dim=1), (torch.log_softmax(logits, dim=1) + self.offsets).argmax(1)


def _offsets(meta: dict) -> list[float]:
    rule = meta["rule"]
    return list(rule["offsets"]) if rule is not None else [0.0] * len(meta["classes"])


def _margin(probs: np.ndarray, offsets: list[float]) -> np.ndarray:
    """How far each decision is from changing: the gap between the two best adjusted scores."""
    scores = np.sort(np.log(np.clip(probs, 1e-30, None)) + np.asarray(offsets), axis=1)
    return scores[:, -1] - scores[:, -2] if scores.shape[1] > 1 else np.full(len(scores), np.inf)


def check_images(cache_dir: str | Path, size: int) -> tuple[np.ndarray, str]:
    """The whole test split's cached images (memory-mapped shards), or random ones when there is no cache."""
    if (Path(cache_dir) / "preprocess.json").exists() and any(Path(cache_dir).glob("test-*.npy")):
        images, _, _ = load_split(cache_dir, "test", paths=False)
        if len(images) and images.shape[1] == size:
            return images, f"all {len(images)} test images from {Path(cache_dir)}"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(8, size, size, 3), dtype=np.uint8), "8 random images (no test cache found)"


def _export_torchscript(model: nn.Module, example: torch.Tensor, out: Path):
    # torch marks torch.jit deprecated in favour of torch.export; the TorchScript file is what
    # libtorch (C++) and older runtimes load, so it stays a format, without torch's notice at each use.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        with torch.no_grad():
            traced = torch.jit.trace(model, example)
        with open(out, "wb") as file:  # through a file, the archive inside is not named after the temporary path
            torch.jit.save(traced, file)
        loaded = torch.jit.load(str(out))
    return lambda x: tuple(t.detach().numpy() for t in loaded(torch.from_numpy(x)))


def _export_onnx(model: nn.Module, example: torch.Tensor, out: Path):
    try:
        import onnx  # noqa: F401 - torch.onnx.export needs it; say so before exporting, not in a traceback
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise TlpipeError(f"export --format onnx needs onnx, onnxscript and onnxruntime ({error.name} is missing): "
                          "pip install -e '.[export]'.") from None
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(model, (example,), str(out), input_names=["images"], output_names=["probabilities", "decision"],
                      dynamo=True, external_data=False, dynamic_shapes={"images": {0: batch}})
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return lambda x: tuple(session.run(None, {"images": x}))


def export(model_path: str | Path, fmt: str, out: str | Path | None = None, cache_dir: str | Path = "data/cache") -> dict:
    """Write the exported model and its JSON sidecar; raise if it drifts more than TOLERANCE."""
    if fmt not in FORMATS:
        raise TlpipeError(f"export: unknown format '{fmt}'; use {' or '.join(FORMATS)}.")
    out = Path(out) if out else Path(model_path).with_suffix("").with_suffix(FORMATS[fmt])
    refuse_overwriting_inputs([out, out.with_name(out.name + ".json")], [model_path, cache_dir])
    classifier, meta = load_model(model_path)
    offsets = _offsets(meta)
    model = Decided(classifier, offsets).eval()
    images, described = check_images(cache_dir, meta["input_size"])

    def floats(part) -> torch.Tensor:
        return to_float_images(images[part], torch.device("cpu"), channels_last=False).contiguous()

    with atomic_path(out) as tmp:
        run = (_export_torchscript if fmt == "torchscript" else _export_onnx)(model, floats(slice(0, 2)), tmp)
        difference, changed = 0.0, 0
        for part in batches(len(images), 64):
            x = floats(part)
            with torch.no_grad():
                expected, decided = (t.numpy() for t in model(x))
            got, got_decided = run(x.numpy())
            difference = max(difference, float(np.abs(got - expected).max()))
            # a decision may only differ where float rounding can tip it: a near-tie of adjusted scores
            changed += int(((got_decided != decided) & (_margin(expected, offsets) > 1e-3)).sum())
        if difference > TOLERANCE or changed:
            raise TlpipeError(f"export: the {fmt} model differs from PyTorch by {difference:.2e} "
                              f"(> {TOLERANCE}) or in {changed} clear decisions on {described}; the file was not written.")
    sidecar = {
        "model": out.name,
        "format": fmt,
        "input": {"name": "images", "shape": ["batch", 3, meta["input_size"], meta["input_size"]],
                  "dtype": "float32", "layout": "NCHW", "color": "RGB", "range": [0.0, 1.0],
                  "normalisation": "done inside the model (mean/std below are for reference)",
                  "mean": meta["mean"], "std": meta["std"]},
        "preprocess": {**meta["preprocess"],
                       "how": "decode, apply EXIF orientation, convert to RGB, resize to size x size by "
                              "`mode` (squash | center-crop | pad), then `contrast` (none | equalize | "
                              "autocontrast, as Pillow's ImageOps), divide by 255"},
        "output": {"name": "probabilities", "classes": meta["classes"]},
        "decision": {"name": "decision", "dtype": "int64",
                     "rule": "argmax(log(probabilities) + offsets), an index into output.classes",
                     "offsets": offsets, "fitted_for": meta["rule"]["metric"] if meta["rule"] else "argmax",
                     "threshold": threshold_of(meta["rule"]),
                     "threshold_rule": "two classes: the same as classes[1] if probabilities[:, 1] > threshold"},
        "checked": {"against": "PyTorch models/model.pt", "on": described, "max_abs_difference": difference,
                    "tolerance": TOLERANCE},
    }
    with atomic_path(out.with_name(out.name + ".json")) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=2) + "\n")
    return sidecar
