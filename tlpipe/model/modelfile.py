"""The model files: models/model.pt (the fine-tuned classifier) and models/head.pt (the head on
frozen features). Both are plain dicts of tensors and values, loaded with weights_only=True, and
carry everything inference needs: classes, head architecture, preprocessing, the decision rule."""

import os
import pickle
import zipfile
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from tlpipe.atomic import atomic_path
from tlpipe.errors import TlpipeError
from tlpipe.model.backbones import create_backbone
from tlpipe.model.classifier import AttentionHead, Classifier, make_head
from tlpipe.params import FinetuneParams

MODEL_FORMAT = "tlpipe.model/2"  # /2: the decision rule (per-class offsets) replaced the binary threshold
HEAD_FORMAT = "tlpipe.head/2"


def head_spec(head: nn.Module) -> dict:
    """The architecture of a head made by make_head (or an AttentionHead), as plain values."""
    if isinstance(head, AttentionHead):
        return head_spec(head.classify) | {"pooling": "attention"}
    if isinstance(head, nn.Linear):
        return {"in_features": head.in_features, "hidden": [], "dropout": 0.0, "num_classes": head.out_features}
    linears = [m for m in head if isinstance(m, nn.Linear)]
    dropouts = [m.p for m in head if isinstance(m, nn.Dropout)]
    return {"in_features": linears[0].in_features, "hidden": [m.out_features for m in linears[:-1]],
            "dropout": float(dropouts[0]) if dropouts else 0.0, "num_classes": linears[-1].out_features}


def build_head(spec: dict) -> nn.Module:
    """The (untrained) head a spec describes; a spec without `pooling` is a plain make_head."""
    args = (spec["in_features"], spec["num_classes"], spec["hidden"], spec["dropout"])
    return AttentionHead(*args) if spec.get("pooling") == "attention" else make_head(*args)


def _tensors(module: nn.Module) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def head_checkpoint(head: nn.Module, classes: list[str], rule: dict | None = None, **extra) -> dict:
    """`rule` is the decision rule fitted on validation (tlpipe.model.decision; None: argmax)."""
    return {"format": HEAD_FORMAT, "head": head_spec(head), "classes": list(classes), "rule": rule,
            **extra, "state_dict": _tensors(head)}


def model_checkpoint(model: Classifier, backbone_name: str, classes: list[str], preprocess: dict,
                     cfg: FinetuneParams, best_epoch: int, rule: dict | None = None) -> dict:
    """`preprocess` is how the resize stage turned files into arrays (size, mode, contrast);
    `rule` the decision rule fitted on validation (tlpipe.model.decision; None: argmax)."""
    return {
        "format": MODEL_FORMAT,
        "backbone": backbone_name,
        "head": head_spec(model.head),
        "classes": list(classes),
        "input_size": int(preprocess["size"]),
        "preprocess": dict(preprocess),
        "mean": [float(v) for v in model.normalize.mean.flatten()],
        "std": [float(v) for v in model.normalize.std.flatten()],
        "params": asdict(cfg),
        "best_epoch": best_epoch,
        "rule": rule,
        "state_dict": _tensors(model),
    }


def save_checkpoint(checkpoint: dict, path: str | os.PathLike) -> None:
    """Write a checkpoint to `path` atomically, the same checkpoint always as the same bytes.

    torch.save names the archive inside the file after the path it is given, which here would be
    atomic_path's random temporary name: every run's file would differ and DVC would take an
    unchanged model for a new one. Saved through an open file, the archive is always "archive"."""
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        torch.save(checkpoint, file)


def _read(path: str | os.PathLike, expected_format: str, producer: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise TlpipeError(f"{path}: no such model file. Run `dvc repro {producer}` (or `dvc pull`) first, "
                          "or give the path of a model file.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise TlpipeError(f"{path}: refused: the file holds code or objects other than tensors "
                          "(loaded with weights_only=True). Use a model file written by the "
                          f"{producer} stage, or rerun `dvc repro {producer}`. ({str(error).splitlines()[0]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise TlpipeError(f"{path}: not a readable model file (empty, cut short or damaged: "
                          f"{str(error).splitlines()[0] if str(error) else type(error).__name__}). "
                          f"Rerun `dvc repro {producer}` or `dvc checkout`.") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != expected_format:
        found = checkpoint.get("format") if isinstance(checkpoint, dict) else None
        older = " (it was written by an older tlpipe, before decision rules)" if found in ("tlpipe.model/1", "tlpipe.head/1") else ""
        raise TlpipeError(f"{path}: not a tlpipe model file of the expected kind (format {expected_format}){older}; "
                          f"rerun `dvc repro {producer}`.")
    return checkpoint


def _load_state(module: nn.Module, state_dict: dict, path) -> None:
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as error:
        raise TlpipeError(f"{path}: its weights do not fit the architecture it names "
                          f"({str(error).splitlines()[0]}); the file is damaged or from another version.") from None


def load_model(path: str | os.PathLike) -> tuple[Classifier, dict]:
    """Rebuild the fine-tuned classifier from models/model.pt alone, in eval mode."""
    checkpoint = _read(path, MODEL_FORMAT, "finetune")
    spec = checkpoint["head"]
    backbone = create_backbone(checkpoint["backbone"], "none", spatial=spec.get("pooling") == "attention")
    model = Classifier(backbone.body, build_head(spec | {"in_features": backbone.num_features}),
                       checkpoint["mean"], checkpoint["std"])
    _load_state(model, checkpoint["state_dict"], path)
    return model.eval(), checkpoint


def load_head(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Rebuild the head on frozen features from models/head.pt, in eval mode."""
    checkpoint = _read(path, HEAD_FORMAT, "train-head")
    spec = checkpoint["head"]
    head = build_head(spec)
    _load_state(head, checkpoint["state_dict"], path)
    return head.eval(), checkpoint
