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


class TrainedModel:
    """A model file ready to classify images from Python: what `tlpipe predict` runs.

        model = tlpipe.load("models/model.pt")
        table = model.predict(["scan.png", "new_scans/", "more.zip"])  # path, predicted, prob_<class>...

    `predicted` is the decision under the rule fitted on validation and stored in the file (for
    two classes a threshold), as in the pipeline's own reports; files that are not readable images
    are listed in `table.attrs["skipped"]` with the reason."""

    def __init__(self, path: str | Path = "models/model.pt", device: str | torch.device = "auto"):
        from tlpipe.runtime import pick_device

        self.model, self.meta = load_model(path)
        self.device = pick_device(device) if isinstance(device, str) else device
        self.model.to(self.device)

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    def predict(self, paths: str | Path | list[str | Path], batch_size: int = 64, flip_tta: bool = False) -> pd.DataFrame:
        inputs = collect_inputs([paths] if isinstance(paths, (str, Path)) else list(paths))
        skipped = list(inputs.skipped)
        names, chunks, batch, batch_names = [], [], [], []

        def flush():
            chunks.append(image_probabilities(self.model, np.stack(batch), batch_size, self.device, flip_tta=flip_tta))
            names.extend(batch_names)
            batch.clear()
            batch_names.clear()

        decoded = _decoded(inputs, self.meta["preprocess"], skipped)
        if len(inputs):  # no bar for nothing to read: the error says why
            decoded = progress(decoded, total=len(inputs), desc="predict", unit="img")
        for name, pixels in decoded:
            if pixels is None:
                continue
            batch.append(pixels)
            batch_names.append(name)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        probs = np.concatenate(chunks) if chunks else np.zeros((0, len(self.classes)))
        table = make_table(names, probs, self.classes, self.meta["rule"])
        table.attrs["skipped"] = sorted(skipped, key=lambda s: s["path"])
        return table


def predict(paths: list[str | Path], model_path: str | Path, batch_size: int, device: torch.device,
            flip_tta: bool = False) -> tuple[pd.DataFrame, list[dict], dict]:
    """(one row per readable image: path, predicted, prob_<class>...; skipped files; model metadata)."""
    model = TrainedModel(model_path, device)
    table = model.predict(paths, batch_size, flip_tta)
    return table, table.attrs["skipped"], model.meta
