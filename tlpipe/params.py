"""Load and validate params.yaml before a stage does any work.

Every key must be known, of the right type and within range; a mistake stops the stage with
a message that names the key, what is allowed, and the closest valid key for a typo.
"""

import difflib
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from tlpipe.errors import TlpipeError
from tlpipe.params_yaml import parse  # noqa: F401 - tlpipe.params.parse is part of the interface


@dataclass(frozen=True)
class Spec:
    kind: type | tuple[type, ...]
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    nullable: bool = False
    auto: bool = False  # the string 'auto' is allowed too (the value is then chosen by the stage)

    def describe(self) -> str:
        if self.choices:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
            text = " or ".join(k.__name__ for k in kinds)
            if self.min is not None:
                text += f" {'>' if self.min_exclusive else '>='} {self.min}"
            if self.max is not None:
                text += f" <= {self.max}"
        return ("'auto' or " if self.auto else "") + text + (" (or null)" if self.nullable else "")


NUM = (int, float)
FRACTION = Spec(NUM, min=0, max=1)
POSITIVE_INT = Spec(int, min=1)
NON_NEGATIVE_INT = Spec(int, min=0)
POSITIVE = Spec(NUM, min=0, min_exclusive=True)
AUTO_OR_POSITIVE = Spec(NUM, min=0, min_exclusive=True, auto=True)
NON_NEGATIVE = Spec(NUM, min=0)
BOOL = Spec(bool)
# The validation figures of a fine-tuning epoch (metrics/finetune.json) a checkpoint or a search is
# chosen by, and whether higher is better: the one table finetune, tune and this validation read.
HIGHER_IS_BETTER = {"val_loss": False, "val_balanced_accuracy": True, "val_accuracy": True,
                    "val_quadratic_kappa": True, "val_decision_metric": True}

DEVICE = Spec(str, choices=("auto", "cpu", "cuda", "mps"))
PROCESSES = Spec(int, min=1, auto=True)


def key(spec: Spec) -> Any:
    """A params key: a required field of its section, checked against `spec`."""
    return field(metadata={"spec": spec})


@dataclass(frozen=True)
class DataParams:
    source: str = key(Spec(str))
    track: str = key(Spec(str))
    sha256: str | None = key(Spec(str, nullable=True))
    max_archive_gb: float = key(POSITIVE)
    max_archive_entries: int = key(POSITIVE_INT)


@dataclass(frozen=True)
class SplitParams:
    seed: int = key(NON_NEGATIVE_INT)
    val_fraction: float = key(Spec(NUM, min=0, max=1, min_exclusive=True))
    test_fraction: float = key(FRACTION)
    group_regex: str | None = key(Spec(str, nullable=True, auto=True))
    labels_csv: str | None = key(Spec(str, nullable=True))
    id_column: str | None = key(Spec(str, nullable=True))
    label_column: str | None = key(Spec(str, nullable=True))
    group_column: str | None = key(Spec(str, nullable=True))
    split_column: str | None = key(Spec(str, nullable=True))
    existing_val: str = key(Spec(str, choices=("keep", "train")))
    existing_test: str = key(Spec(str, choices=("keep", "train")))
    small_class: str = key(Spec(str, choices=("error", "drop")))
    cross_split_duplicates: str = key(Spec(str, choices=("report", "drop")))
    near_duplicate_similarity: float | None = key(Spec(NUM, min=0, max=1, nullable=True))
    folds: int = key(NON_NEGATIVE_INT)
    fold: int = key(NON_NEGATIVE_INT)


@dataclass(frozen=True)
class ResizeParams:
    size: int | str = key(Spec(int, min=1, auto=True))
    mode: str = key(Spec(str, choices=("squash", "center-crop", "pad")))
    contrast: str = key(Spec(str, choices=("none", "equalize", "autocontrast")))
    workers: int = key(NON_NEGATIVE_INT)
    max_unreadable_fraction: float = key(FRACTION)
    shard_mb: float = key(POSITIVE)


@dataclass(frozen=True)
class BackboneParams:
    name: str = key(Spec(str))
    weights: str = key(Spec(str, choices=("default", "none")))


@dataclass(frozen=True)
class FeaturesParams:
    batch_size: int = key(POSITIVE_INT)
    flip_tta: bool = key(BOOL)
    device: str = key(DEVICE)
    processes: int | str = key(PROCESSES)
    spatial_grid: int = key(Spec(int, min=0, max=16))


@dataclass(frozen=True)
class HeadParams:
    kind: str = key(Spec(str, choices=("logreg", "mlp", "attention")))
    C: float | str = key(AUTO_OR_POSITIVE)
    class_weight: str = key(Spec(str, choices=("balanced", "none")))
    hidden: list[int] | int = key(Spec((list, int), min=1))
    dropout: float = key(Spec(NUM, min=0, max=0.95))
    epochs: int = key(POSITIVE_INT)
    lr: float = key(POSITIVE)
    weight_decay: float = key(NON_NEGATIVE)
    batch_size: int = key(POSITIVE_INT)
    seed: int = key(NON_NEGATIVE_INT)
    max_fit_images: int = key(NON_NEGATIVE_INT)


@dataclass(frozen=True)
class FinetuneParams:
    epochs: int = key(NON_NEGATIVE_INT)
    strategy: str = key(Spec(str, choices=("head", "last_blocks", "all", "auto")))
    freeze_epochs: int = key(NON_NEGATIVE_INT)
    unfreeze: str | int = key(Spec((str, int), min=1))
    batch_size: int = key(POSITIVE_INT)
    lr: float | str = key(Spec((str, int, float), min=0, min_exclusive=True))
    lr_find_steps: int = key(Spec(int, min=10))
    lr_find_min: float = key(POSITIVE)
    lr_find_max: float = key(POSITIVE)
    layer_decay: float = key(Spec(NUM, min=0, max=1, min_exclusive=True))
    weight_decay: float = key(NON_NEGATIVE)
    label_smoothing: float = key(Spec(NUM, min=0, max=0.5))
    ema_decay: float = key(Spec(NUM, min=0, max=0.9999))
    class_balance: str = key(Spec(str, choices=("none", "weights", "sampler")))
    class_balance_power: float = key(FRACTION)
    bn_policy: str = key(Spec(str, choices=("train", "freeze")))
    head: str = key(Spec(str, choices=("linear", "attention")))
    head_init: str = key(Spec(str, choices=("probe", "random")))
    probe_C: float | str = key(AUTO_OR_POSITIVE)
    probe_max_images: int = key(NON_NEGATIVE_INT)
    aug_scale_min: float = key(Spec(NUM, min=0.05, max=1))
    aug_flip: bool = key(BOOL)
    aug_rotation: float = key(Spec(NUM, min=0, max=180))
    aug_jitter: float = key(Spec(NUM, min=0, max=1))
    early_stop_metric: str = key(Spec(str, choices=tuple(HIGHER_IS_BETTER)))
    patience: int = key(NON_NEGATIVE_INT)
    device: str = key(DEVICE)
    processes: int | str = key(PROCESSES)
    amp: bool = key(BOOL)
    channels_last: bool = key(BOOL)
    deterministic: bool = key(BOOL)
    seed: int = key(NON_NEGATIVE_INT)


@dataclass(frozen=True)
class ReportParams:
    top_losses: int = key(POSITIVE_INT)
    gradcam_per_class: int = key(POSITIVE_INT)


@dataclass(frozen=True)
class EvaluateParams:
    decision_metric: str = key(Spec(str, choices=("accuracy", "balanced_accuracy", "macro_f1", "quadratic_kappa",
                                                   "youden")))
    batch_size: int = key(POSITIVE_INT)
    flip_tta: bool = key(BOOL)
    device: str = key(DEVICE)
    processes: int | str = key(PROCESSES)
    confusion_max_rows: int = key(NON_NEGATIVE_INT)
    prior_shift: bool = key(BOOL)  # opt-in figures next to the plain ones
    ensemble: bool = key(BOOL)


@dataclass(frozen=True)
class Params:
    """params.yaml, checked: one frozen object per section (`p.finetune.lr`). A value a stage
    resolves (lr: auto, C: auto) is a new object (`dataclasses.replace`), never written back."""
    data: DataParams
    split: SplitParams
    resize: ResizeParams
    backbone: BackboneParams
    features: FeaturesParams
    head: HeadParams
    finetune: FinetuneParams
    report: ReportParams
    evaluate: EvaluateParams

    def value(self, key: str) -> Any:
        """The value of `key`, 'section.name'."""
        section, _, name = key.partition(".")
        return getattr(getattr(self, section), name)


SECTIONS: dict[str, type] = get_type_hints(Params)
# section -> key -> Spec, in params.yaml's order: what validation checks and what dvc.yaml must declare
SCHEMA: dict[str, dict[str, Spec]] = {name: {f.name: f.metadata["spec"] for f in fields(section)}
                                      for name, section in SECTIONS.items()}


def make_section(name: str, values: dict) -> Any:
    """The typed section `name` of checked `values` (a dict of that section's keys)."""
    return SECTIONS[name](**values)


def as_dict(p: Any) -> dict:
    """A Params object or one section as plain dicts (for JSON files and checkpoints)."""
    return asdict(p)


def _closest(name: str, options) -> str:
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""


def _check_value(key: str, value: Any, spec: Spec) -> None:
    if (spec.auto and value == "auto") or (value is None and spec.nullable):
        return
    if value is None:
        raise TlpipeError(f"params: '{key}' must be {spec.describe()}, got null.")
    kinds = spec.kind if isinstance(spec.kind, tuple) else (spec.kind,)
    # bool is an int in Python; a YAML `true` for a number (or 1 for a flag) is a mistake.
    wrong_type = not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)
    if wrong_type:
        raise TlpipeError(f"params: '{key}' must be {spec.describe()}, got {value!r} ({type(value).__name__}).")
    if spec.choices is not None and value not in spec.choices:
        raise TlpipeError(f"params: '{key}' must be {spec.describe()}, got {value!r}.{_closest(str(value), spec.choices)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise TlpipeError(f"params: '{key}' must be {spec.describe()}, got {value!r}: not a finite number.")
    if isinstance(value, NUM) and not isinstance(value, bool):
        too_low = spec.min is not None and (value <= spec.min if spec.min_exclusive else value < spec.min)
        too_high = spec.max is not None and value > spec.max
        if too_low or too_high:
            raise TlpipeError(f"params: '{key}' must be {spec.describe()}, got {value!r}.")


def _check_cross_field(params: dict) -> None:
    split = params["split"]
    if split["val_fraction"] + split["test_fraction"] >= 1:
        raise TlpipeError(
            "params: 'split.val_fraction' + 'split.test_fraction' must be < 1 (something must be "
            f"left to train on), got {split['val_fraction']} + {split['test_fraction']}."
        )
    if split["folds"] == 1:
        raise TlpipeError("params: 'split.folds' must be 0 (off: one validation split) or at least 2 (k-fold "
                          "cross-validation with `tlpipe cv`), got 1.")
    if split["fold"] >= max(split["folds"], 1):
        raise TlpipeError(f"params: 'split.fold' ({split['fold']}) must be below 'split.folds' ({split['folds']}): "
                          "folds are numbered from 0" + (" (and it is 0 while split.folds is 0)." if not split["folds"]
                                                         else "."))
    unfreeze = params["finetune"]["unfreeze"]
    if isinstance(unfreeze, str) and unfreeze != "all":
        raise TlpipeError(f"params: 'finetune.unfreeze' must be 'all' or a number of last blocks (>= 1), got {unfreeze!r}.")
    hidden = params["head"]["hidden"]
    if isinstance(hidden, list) and not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden):
        raise TlpipeError(f"params: 'head.hidden' must be a list of hidden layer widths (whole numbers >= 1), e.g. "
                          f"[512] or [512, 256], got {hidden!r}.")
    if params["head"]["kind"] == "mlp" and hidden == []:
        raise TlpipeError("params: 'head.kind: mlp' needs at least one hidden layer in 'head.hidden', e.g. [512]; "
                          "no hidden layer is head.kind: logreg.")
    tune = params["finetune"]
    if isinstance(tune["lr"], str) and tune["lr"] != "auto":
        raise TlpipeError(f"params: 'finetune.lr' must be a number > 0 or 'auto' (a range test picks it), "
                          f"got {tune['lr']!r}.")
    if tune["lr_find_min"] >= tune["lr_find_max"]:
        raise TlpipeError(f"params: 'finetune.lr_find_min' must be below 'finetune.lr_find_max', got "
                          f"{tune['lr_find_min']} and {tune['lr_find_max']}.")
    if tune["freeze_epochs"] > tune["epochs"]:
        raise TlpipeError(f"params: 'finetune.freeze_epochs' ({tune['freeze_epochs']}) is more than 'finetune.epochs' "
                          f"({tune['epochs']}): the body would never train. Set freeze_epochs to at most epochs, or "
                          "finetune.strategy: head to train the head alone.")
    if params["head"]["kind"] == "attention" and params["features"]["spatial_grid"] == 0:
        raise TlpipeError("params: 'head.kind: attention' pools feature maps, which 'features.spatial_grid: 0' "
                          "does not keep; set features.spatial_grid (e.g. 4), or head.kind: logreg.")
    if tune["strategy"] == "last_blocks" and unfreeze == "all":
        raise TlpipeError("params: 'finetune.strategy: last_blocks' needs 'finetune.unfreeze' as a number of "
                          "last block groups (e.g. 3); 'all' is what 'finetune.strategy: all' does.")
    if split["group_regex"] not in (None, "auto"):
        try:
            pattern = re.compile(split["group_regex"])
        except re.error as error:
            raise TlpipeError(f"params: 'split.group_regex' is not a valid regular expression ({error}): "
                              f"{split['group_regex']!r}. Quote it in single quotes in params.yaml.") from None
        if pattern.groups > 1:
            raise TlpipeError(f"params: 'split.group_regex' must have at most one capture group (the group key), "
                              f"got {pattern.groups}: {split['group_regex']!r}. Use (?:...) for the others.")
    for key in ("labels_csv",):
        value = split[key]
        if value is not None and (Path(value).is_absolute() or ".." in Path(value).parts or not value.strip()):
            raise TlpipeError(f"params: 'split.{key}' must be a path inside data/raw (it is read from the "
                              f"downloaded data, which DVC tracks), got {value!r}. Put the CSV inside the "
                              "data set's folder or archive and give its path relative to data/raw.")
    source = params["data"]["source"]
    if not source.startswith(("sklearn:", "kaggle:", "url:", "path:")):
        raise TlpipeError(
            f"params: 'data.source' must start with sklearn:, kaggle:, url: or path:, got {source!r}."
        )
    if not source.partition(":")[2].strip():
        raise TlpipeError(f"params: 'data.source' names no {source.partition(':')[0]} source after the colon, "
                          f"got {source!r}; e.g. path:/data/my-set or kaggle:OWNER/DATASET.")
    _check_track(params["data"])


NOTHING_TO_TRACK = "stages/download.py"  # sklearn: and kaggle: sources: the version is in data.source itself


def track_for(source: str) -> str:
    """What DVC must hash to see new data behind `source` (dvc.yaml's download stage depends on
    `${data.track}`): the folder or archive of a path: source, the file of a url: source."""
    kind, _, where = source.partition(":")
    if kind == "path":
        return os.path.normpath(os.path.expanduser(where.strip()))
    if kind == "url":
        return where.strip()
    return NOTHING_TO_TRACK


def _check_track(data: dict) -> None:
    expected = track_for(data["source"])
    track = data["track"]
    same = os.path.normpath(track) == expected if data["source"].startswith("path:") else track == expected
    if not same:
        raise TlpipeError(
            f"params: 'data.track' must be {expected!r} for data.source {data['source']!r} (DVC hashes it to see "
            f"new, changed or deleted data), got {track!r}. Set it, or run `tlpipe source {data['source']}`, "
            "which sets both.")
    digest = data["sha256"]
    if digest is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
        raise TlpipeError(f"params: 'data.sha256' must be the 64 hex digits of the archive's SHA-256 (or null), "
                          f"got {digest!r}; `sha256sum FILE` prints it.")
    if digest is not None and data["source"].startswith(("sklearn:", "kaggle:")):
        raise TlpipeError(f"params: 'data.sha256' checks the archive of a url: or path: source; "
                          f"{data['source']!r} is pinned by its name (a Kaggle version) instead. Set it to null.")


def validate(params: Any, where: str = "params.yaml") -> Params:
    """`params` (parsed YAML) as a Params object if it matches SCHEMA exactly, else raise
    TlpipeError naming the key."""
    if not isinstance(params, dict):
        raise TlpipeError(f"{where}: expected a mapping of sections ({', '.join(SCHEMA)}).")
    for section, values in params.items():
        if section not in SCHEMA:
            raise TlpipeError(f"{where}: unknown section '{section}'.{_closest(section, SCHEMA)}")
        if not isinstance(values, dict):
            raise TlpipeError(f"{where}: section '{section}' must be a mapping of keys.")
        for key in values:
            if key not in SCHEMA[section]:
                raise TlpipeError(
                    f"{where}: unknown key '{section}.{key}'.{_closest(key, SCHEMA[section])} "
                    f"Valid keys: {', '.join(SCHEMA[section])}."
                )
    for section, specs in SCHEMA.items():
        for key, spec in specs.items():
            if key not in params.get(section, {}):
                raise TlpipeError(f"{where}: missing key '{section}.{key}' ({spec.describe()}).")
            _check_value(f"{section}.{key}", params[section][key], spec)
    _check_cross_field(params)
    return Params(**{name: make_section(name, params[name]) for name in SECTIONS})


def load(path: str | os.PathLike = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise TlpipeError(f"{path}: not found. Run from the project folder (where dvc.yaml is).")
    if path.is_dir():
        raise TlpipeError(f"{path}: is a folder; give the params file (params.yaml).")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise TlpipeError(f"{path}: not UTF-8 text (byte {error.start}); save it as UTF-8.") from None
    except OSError as error:
        raise TlpipeError(f"{path}: cannot be read ({error.strerror}).") from None
    loaded = validate(parse(text, str(path)), str(path))
    _refuse_source_inside_outputs(loaded.data.source, path.parent)
    return loaded


def _pipeline_outputs(project: Path) -> list[Path]:
    """Every path a stage of `project`'s dvc.yaml writes (outs, metrics, plots)."""
    try:
        stages = (yaml.safe_load((project / "dvc.yaml").read_text(encoding="utf-8")) or {}).get("stages", {})
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
        return []
    outputs = []
    for stage in stages.values() if isinstance(stages, dict) else []:
        for kind in ("outs", "metrics", "plots"):
            for entry in (stage or {}).get(kind, []) or []:
                outputs.extend(project / name for name in (entry if isinstance(entry, dict) else [entry]))
    return outputs


def _refuse_source_inside_outputs(source: str, project: Path) -> None:
    """DVC deletes a stage's outputs before it runs it: data kept inside one would be lost."""
    kind, _, where = source.partition(":")
    if kind != "path":
        return
    src = (project / Path(where.strip()).expanduser()).resolve()
    for output in _pipeline_outputs(project):
        output = output.resolve()
        if src == output or src.is_relative_to(output) or output.is_relative_to(src):
            raise TlpipeError(
                f"params: 'data.source' path:{where.strip()} overlaps {output.relative_to(project.resolve())}, which "
                "the pipeline writes (DVC deletes it before each run, so your files would be lost). "
                "Move the data set outside data/raw, data/cache, models/ and the other outputs, e.g. to data/source/.")
