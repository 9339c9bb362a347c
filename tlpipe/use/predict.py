"""`tlpipe predict`: classify image files, folders (recursive) and archives with models/model.pt alone.

The model file carries everything: class names, how the resize stage made its arrays (size, mode,
contrast), normalisation, backbone, and the decision rule fitted on validation.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tlpipe.errors import TlpipeError
from tlpipe.data.images import decode_or_reason, is_image_name
from tlpipe.data.raw import RawData, archive_members, is_archive, is_litter
from tlpipe.model.inference import image_probabilities
from tlpipe.model.modelfile import load_model
from tlpipe.progress import progress
from tlpipe.use.predictions import make_table


@dataclass
class Inputs:
    """What to read: per reader, the paths it knows and how to show them; and what was skipped."""
    groups: list[tuple[RawData, list[str], str]] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(len(paths) for _, paths, _ in self.groups)


def _prefix(folder: Path) -> str:
    return "" if folder == Path(".") else f"{folder.as_posix().rstrip('/')}/"


def collect_inputs(paths: list[str | Path]) -> Inputs:
    inputs = Inputs()
    for given in map(Path, paths):
        try:
            if given.is_dir():
                raw = RawData(given)
                entries = raw.entries()
                prefix = _prefix(given)
            elif given.is_file() and is_archive(given.name):
                raw, entries = archive_members(given)
                prefix = _prefix(given.parent)
            elif given.is_file():
                inputs.groups.append((RawData(given.parent), [given.name], _prefix(given.parent)))
                continue
            else:
                inputs.skipped.append({"path": str(given), "reason": "no such file or folder"})
                continue
        except TlpipeError as error:
            inputs.skipped.append({"path": str(given), "reason": str(error)})
            continue
        inputs.skipped += [{"path": prefix + r.path, "reason": r.reason} for r in raw.rejected]
        wanted = []
        for entry in entries:
            if is_litter(entry.path):
                inputs.skipped.append({"path": prefix + entry.path, "reason": "hidden or system file"})
            elif not is_image_name(entry.path):
                inputs.skipped.append({"path": prefix + entry.path, "reason": "not an image file"})
            else:
                wanted.append(entry.path)
        inputs.groups.append((raw, wanted, prefix))
    return inputs


def _decoded(inputs: Inputs, preprocess: dict, skipped: list[dict]) -> Iterator[tuple[str, np.ndarray]]:
    for raw, paths, prefix in inputs.groups:
        for path, content in raw.iter_bytes(paths):
            pixels, reason = decode_or_reason(content, preprocess["size"], preprocess["mode"], preprocess["contrast"])
            if reason is not None:
                skipped.append({"path": prefix + path, "reason": reason})
            yield prefix + path, pixels  # None when unreadable: it still counts as done for the bar


def predict(paths: list[str | Path], model_path: str | Path, batch_size: int, device: torch.device,
            flip_tta: bool = False) -> tuple[pd.DataFrame, list[dict], dict]:
    """(one row per readable image: path, predicted, prob_<class>...; skipped files; model metadata)."""
    model, meta = load_model(model_path)
    model.to(device)
    inputs = collect_inputs(paths)
    skipped = list(inputs.skipped)
    names, chunks, batch, batch_names = [], [], [], []

    def flush():
        chunks.append(image_probabilities(model, np.stack(batch), batch_size, device, flip_tta=flip_tta))
        names.extend(batch_names)
        batch.clear()
        batch_names.clear()

    for name, pixels in progress(_decoded(inputs, meta["preprocess"], skipped), total=len(inputs),
                                 desc="predict", unit="img"):
        if pixels is None:
            continue
        batch.append(pixels)
        batch_names.append(name)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    classes = meta["classes"]
    probs = np.concatenate(chunks) if chunks else np.zeros((0, len(classes)))
    return make_table(names, probs, classes, meta["rule"]), sorted(skipped, key=lambda s: s["path"]), meta

