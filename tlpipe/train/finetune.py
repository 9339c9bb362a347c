"""The finetune stage: backbone + head trained end to end from the cached uint8 arrays.

One readable loop: `Training.epoch` and `validate` apart, every knob from `finetune.*`, no
global state. Under torchrun (`ranks`, tlpipe.distributed) each rank trains on its share of every
global batch through a DDP wrapper, validates its share of the batches and sees all the figures;
the stage logs and saves on rank 0 alone.
"""

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from tlpipe.distributed import SINGLE, Ranks, Replicas, share, share_weights, sum_over_ranks
from tlpipe.errors import TlpipeError
from tlpipe.model.backbones import Backbone, block_groups
from tlpipe.model.classifier import AttentionHead, Classifier, make_head
from tlpipe.model.decision_fit import fit_rule
from tlpipe.model.inference import predict_logits
from tlpipe.progress import progress
from tlpipe.runtime import batches, to_float_images
from tlpipe.train.augment import Augment
from tlpipe.train.choose import choose_logreg, fit_temperature, scale_linear
from tlpipe.train.head import class_weights
from tlpipe.train.loader import device_batches
from tlpipe.train.lr_find import LrCurve, range_test
from tlpipe.train.order import epoch_order
from tlpipe.train.resume import Checkpoints, random_states, restore_random_states
from tlpipe.train.selection import EarlyStopping, per_image_cost
from tlpipe.train.step import NonFiniteLoss, decay_groups, step
from tlpipe.train.strategy import set_trainable
from tlpipe.params import FinetuneParams

WARMUP_SHARE = 0.3  # of the one-cycle schedule spent raising the rate (torch's default)


@dataclass
class Split:
    images: np.ndarray   # (N, H, W, 3) uint8: a memory map or ShardedImages (tlpipe.data.cache.load_split)
    labels: np.ndarray   # (N,) int64
    groups: np.ndarray | None = None  # (N,) split.csv's groups, where rules are fitted on it (validation)
    # (N, F) the frozen backbone's pooled features of these images as extract-features computed them
    # (no flip TTA), where they are what the starting model's body computes: its validation reads them
    features: np.ndarray | None = None


@dataclass
class Features:
    values: np.ndarray   # (N, F) float32: the frozen backbone's features of the training split
    labels: np.ndarray   # (N,) int64


@dataclass
class FitResult:
    state_dict: dict
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    start: dict | None = None   # validation figures of the starting model (the probe), when checked
    kept_probe: bool = False    # the frozen epochs ended worse on validation loss than the probe: undone
    best_value_epoch: int = -1  # the epoch with the best early_stop_metric; best_epoch (kept) is the last
    #                             epoch not worse than it beyond the noise, where the metric is a mean over images


def probe_head(backbone: Backbone, num_classes: int, cfg: FinetuneParams, probe: Features | None,
               probe_val: Features | None = None) -> tuple[nn.Module, dict]:
    """The starting head of `head_init: probe`: a logistic regression on the frozen backbone's features
    of the training split, its C chosen on the validation features (`probe_C: auto`) and its logits
    divided by a temperature fitted on them, so the first epochs start from a calibrated head.
    Returns the head and what was chosen (for the stage's metrics)."""
    if probe is None or probe.values.shape[1] != backbone.num_features or (
            probe_val is not None and probe_val.values.shape[1] != backbone.num_features):
        raise TlpipeError("finetune: data/features does not match backbone.name; "
                          "run `dvc repro` so that extract-features reruns.")
    if probe_val is None:
        if cfg.probe_C == "auto":
            raise TlpipeError("finetune: finetune.probe_C: auto chooses C on the validation features; "
                              "none were given (data/features/val.npy).")
        probe_val = Features(probe.values[:0], probe.labels[:0])
    head, chosen = choose_logreg(probe.values, probe.labels, probe_val.values, probe_val.labels, num_classes,
                                 cfg.probe_C, cfg.class_balance != "none", cfg.seed)
    report = {"probe_C": chosen["C"], **({"probe_C_grid": chosen["C_grid"]} if "C_grid" in chosen else {})}
    if len(probe_val.labels):
        with torch.no_grad():  # in batches: validation grows with the data set
            logits = torch.cat([head(torch.from_numpy(np.array(probe_val.values[part], dtype=np.float32)))
                                for part in batches(len(probe_val.labels), 1024)])
        temperature = fit_temperature(logits, probe_val.labels)
        scale_linear(head, temperature)
        report |= {"probe_temperature": temperature,
                   "probe_val_loss_on_features": nn.functional.cross_entropy(
                       logits / temperature, torch.from_numpy(np.array(probe_val.labels))).item()}
    return head, report


def build_model(backbone: Backbone, num_classes: int, cfg: FinetuneParams, probe: Features | None = None,
                head: nn.Module | None = None) -> Classifier:
    """Backbone + head; `head` if given, else with head_init 'probe' the head starts as a logistic
    regression fitted on `probe` (see probe_head), so the first epochs refine a good head instead of
    pushing random gradients into the body. It is fitted here, not read from train-head, so that
    iterating on `head.*` never reruns this stage."""
    if head is None:
        head = (probe_head(backbone, num_classes, cfg, probe)[0] if cfg.head_init == "probe"
                else make_head(backbone.num_features, num_classes))
    if cfg.head == "attention":  # (a spatial backbone) its pooling starts uniform: the probe is exact at first
        attention = AttentionHead(backbone.num_features, num_classes)
        attention.classify = head
        head = attention
    return Classifier(backbone.body, head, backbone.mean, backbone.std)


def param_groups(model: Classifier, lr: float, layer_decay: float) -> list[dict]:
    """Head at `lr`; each body block group further from the head gets `layer_decay` times less. In
    each, biases and normalisation scales are left out of weight decay (train.step.decay_groups)."""
    groups = decay_groups(model.head.parameters(), "head", lr=lr)
    for depth, block in enumerate(reversed(block_groups(model.body)), start=1):
        groups += decay_groups(block.parameters(), f"body-{depth}", lr=lr * layer_decay**depth)
    return groups


def balance_power(cfg: FinetuneParams) -> float:
    """How strongly the loss weights favour rare classes: frequency ** -power (0 with class_balance none)."""
    return 0.0 if cfg.class_balance == "none" else float(cfg.class_balance_power)


def _batch_weight(y: torch.Tensor, loss_fn: nn.CrossEntropyLoss) -> torch.Tensor:
    """What the loss's mean divides by: the images, or with class weights the sum of their weights."""
    return (loss_fn.weight[y].sum() if loss_fn.weight is not None else torch.tensor(float(len(y)))).double().cpu()


def validate(model: Classifier, data: Split, cfg: FinetuneParams, device: torch.device,
             decision: tuple[str, np.ndarray] | None = None, ranks: Ranks = SINGLE) -> tuple[dict, torch.Tensor]:
    """Validation figures of one epoch, and the logits they come from; with `decision` (metric,
    training labels) also that metric under a decision rule fitted to these validation predictions
    (`val_decision_metric`). Every rank computes the same figures (the logits are gathered on each)."""
    logits = predict_logits(model, data.images, cfg.batch_size * 2, device, cfg.channels_last, amp=cfg.amp,
                            ranks=ranks)
    return validation_figures(logits, data, decision), logits


def validate_start(model: Classifier, data: Split, cfg: FinetuneParams, device: torch.device,
                   decision: tuple[str, np.ndarray] | None = None, ranks: Ranks = SINGLE) -> dict:
    """The starting model's validation figures. Its body is the frozen backbone extract-features ran,
    so where the cached features are at hand (`data.features`, a linear head) only the head runs on
    them: the same logits but for float rounding, without a pass of the backbone over the images."""
    if data.features is None or not isinstance(model.head, nn.Linear) or \
            data.features.shape != (len(data.labels), model.head.in_features):
        return validate(model, data, cfg, device, decision, ranks)[0]
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model.head(torch.from_numpy(np.array(data.features[part], dtype=np.float32)).to(device))
                            .float().cpu() for part in batches(len(data.labels), 4096)])
    return validation_figures(logits, data, decision)


def validation_figures(logits: torch.Tensor, data: Split, decision: tuple[str, np.ndarray] | None = None) -> dict:
    labels = torch.from_numpy(np.array(data.labels))
    predicted = logits.argmax(1).numpy()
    extra = {}
    if decision is not None:
        rule = fit_rule(data.labels, torch.softmax(logits.double(), 1).numpy(), decision[0], decision[1],
                        groups=data.groups)
        extra["val_decision_metric"] = float(np.nan_to_num(rule["val_rule"] if rule["val_rule"] is not None else 0.0))
    return extra | {
        "val_loss": nn.functional.cross_entropy(logits, labels).item(),
        "val_accuracy": float((predicted == data.labels).mean()),
        "val_balanced_accuracy": float(balanced_accuracy_score(data.labels, predicted)),
        # nan when predictions or labels hold one class only: no agreement beyond chance
        "val_quadratic_kappa": float(np.nan_to_num(cohen_kappa_score(data.labels, predicted, weights="quadratic"))),
    }


def _training_setup(model: Classifier, train: Split, cfg: FinetuneParams, num_classes: int, device: torch.device,
                    lr: float) -> tuple[nn.Module, list[dict], Augment]:
    """Model on `device`; (loss, optimizer param groups at head rate `lr`, augmentation) as training uses them."""
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    weight = None
    if cfg.class_balance == "weights":
        weight = torch.tensor(class_weights(train.labels, num_classes, balance_power(cfg)), dtype=torch.float32,
                              device=device)
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    return loss_fn, param_groups(model, lr, cfg.layer_decay), augmentation(cfg)


def augmentation(cfg: FinetuneParams) -> Augment:
    return Augment(cfg.aug_scale_min, flip=cfg.aug_flip, rotation=cfg.aug_rotation, jitter=cfg.aug_jitter)


def augmented_batch(train: Split, cfg: FinetuneParams, n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` images of the first epoch's order, augmented as training augments them (fastai's
    `show_batch`): (n, H, W, 3) uint8 and their labels. Its own generator: training is not moved."""
    rows = epoch_order(train.labels, cfg.seed, 0, balanced=cfg.class_balance == "sampler")[:n]
    x = to_float_images(np.asarray(train.images[rows]), torch.device("cpu"), channels_last=False)
    out = augmentation(cfg)(x, torch.Generator().manual_seed(cfg.seed))
    return (out.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8), np.asarray(train.labels)[rows]


def lr_range_test(model: Classifier, train: Split, cfg: FinetuneParams, num_classes: int, device: torch.device) -> LrCurve:
    """The learning-rate range test (tlpipe.train.lr_find) on what the unfrozen phase trains, with the
    same loss, rates across block groups and augmentation; the model is left as it was."""
    loss_fn, groups, augment = _training_setup(model, train, cfg, num_classes, device, 1.0)
    unfrozen_epoch = cfg.freeze_epochs if cfg.epochs > cfg.freeze_epochs else 0
    set_trainable(model, unfrozen_epoch, cfg)
    return range_test(model, train.images, train.labels, groups, loss_fn, augment, cfg, device)


def fit(model: Classifier, train: Split, val: Split, cfg: FinetuneParams, num_classes: int, device: torch.device,
        log: Callable[[str], None] = print, on_epoch: Callable[[dict], None] | None = None,
        decision_metric: str | None = None, ranks: Ranks = SINGLE, checkpoints: Checkpoints | None = None,
        ) -> FitResult:
    """Train for `cfg.epochs` and keep the last epoch whose `early_stop_metric` is not worse than the
    best epoch's beyond the noise (train.selection): where validation cannot separate two epochs, a
    saturated validation set included, the schedule's later one. `val_quadratic_kappa` and
    `val_decision_metric` (`decision_metric` under a rule fitted on that epoch's validation) are no
    means over images: they keep the best epoch.
    `cfg.batch_size` is the global batch: one and N processes (`ranks`) train the same model.
    With `checkpoints` (tlpipe.train.resume) the state is saved after every epoch; a matching one is resumed."""
    if len(train.labels) == 0 or len(val.labels) == 0:
        raise TlpipeError("finetune: the train and val splits must both hold images.")
    metric = cfg.early_stop_metric
    if metric == "val_decision_metric" and decision_metric is None:
        raise TlpipeError("finetune: early_stop_metric val_decision_metric needs evaluate.decision_metric.")
    decision = (decision_metric, train.labels) if decision_metric is not None else None
    run = Training(model, train, cfg, num_classes, device, ranks)
    # validation dips while the rate rises and after unfreezing: patience counts from after the peak
    stopping = EarlyStopping(metric, cfg.patience,
                             first_counted=max(cfg.freeze_epochs, math.floor(WARMUP_SHARE * cfg.epochs) + 1))
    result = FitResult(copy.deepcopy(model.state_dict()), best_epoch=-1)
    guard = _ProbeGuard(enabled=cfg.head_init == "probe" and 0 < cfg.freeze_epochs <= cfg.epochs,
                        last_frozen_epoch=cfg.freeze_epochs - 1)
    first_epoch = 0
    saved = share(checkpoints.load() if checkpoints is not None and ranks.is_main else None, ranks)
    if saved is not None:
        run.restore(saved)
        result, stopping = FitResult(**saved["result"]), EarlyStopping.restored(saved["stopping"])
        guard.start_head, first_epoch = saved["start_head"], saved["epoch"] + 1
        log(f"finetune: resuming after epoch {saved['epoch']} from {checkpoints.path} (same params, inputs and code)")
    elif guard.enabled:
        result.start = validate_start(run.validated, val, cfg, device, decision, ranks)
        guard.start_head = copy.deepcopy(model.head.state_dict())
        log(f"probe: val_loss {result.start['val_loss']:.4f} val_accuracy {result.start['val_accuracy']:.4f}")
    for epoch in range(first_epoch, cfg.epochs if not stopping.stopped else 0):
        row = {"step": epoch, "lr": run.optimizer.param_groups[0]["lr"]}
        row |= run.epoch(epoch)
        figures, logits = validate(run.validated, val, cfg, device, decision, ranks)
        row |= figures
        if guard.undoes(epoch, row, result.start):
            log(f"epoch {epoch}: val_loss {row['val_loss']:.4f} is worse than the probe's; the frozen epochs "
                "are undone (the probe head is kept)")
            guard.restore(model, run.validated)
            row |= result.start
            result.kept_probe = True
            _, logits = validate(run.validated, val, cfg, device, None, ranks)
        result.history.append(row)
        improved, kept = stopping.observe(epoch, row[metric], per_image_cost(metric, logits, val.labels), val.groups)
        log(f"epoch {epoch}: train_loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f} "
            f"val_accuracy {row['val_accuracy']:.4f}"
            + (f" {metric} {row[metric]:.4f}" if metric not in ("val_loss", "val_accuracy") else "")
            + f" ({row['train_images_per_s']:.0f} img/s)"
            + (" *best" if improved else " kept: within the noise of the best" if kept else ""))
        if kept:
            result.state_dict, result.best_epoch = copy.deepcopy(run.validated.state_dict()), epoch
        if improved:
            result.best_value_epoch = epoch
        if checkpoints is not None and ranks.is_main:
            checkpoints.save({"epoch": epoch, **run.state(), "result": result, "stopping": stopping,
                              "start_head": guard.start_head})
        if on_epoch is not None:  # the stage logs it live (tlpipe/train/live.py): DVC sees progress mid-run
            on_epoch(row)
        if stopping.stopped:
            log(f"early stop: no better {metric} for {stopping.since_best} epochs; keeping epoch {result.best_epoch}")
            break
    model.load_state_dict(result.state_dict)
    return result


class Training:
    """What one fine-tuning run trains with: the loss, AdamW over the layer-wise rate groups, the
    one-cycle schedule, the weights' moving average (ema_decay > 0: what gets validated and kept, as
    averaged weights sit in flatter minima and tend to carry better to shifted test data), the
    augmentation's generator and the DDP replicas. `state()`/`restore()` are what resume saves."""

    def __init__(self, model: Classifier, train: Split, cfg: FinetuneParams, num_classes: int, device: torch.device,
                 ranks: Ranks):
        self.model, self.train, self.cfg, self.device, self.ranks = model, train, cfg, device, ranks
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.loss_fn, groups, self.augment = _training_setup(model, train, cfg, num_classes, device, cfg.lr)
        share_weights(model, ranks)
        self.replicas = Replicas(model, ranks, device)
        self.optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        steps_per_epoch = -(-len(train.labels) // cfg.batch_size)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=[g["lr"] for g in groups], total_steps=max(1, cfg.epochs * steps_per_epoch),
            pct_start=WARMUP_SHARE)
        self.average = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
                        if cfg.ema_decay > 0 else None)
        self.validated = self.average.module if self.average is not None else model

    def epoch(self, epoch: int, data: Split | None = None) -> dict:
        """Train one epoch on `data` (default: the training split); its loss and images/s."""
        model, cfg, ranks, loss_fn = self.model, self.cfg, self.ranks, self.loss_fn
        data = self.train if data is None else data
        set_trainable(model, epoch, cfg)
        step_model = self.replicas()
        order = epoch_order(data.labels, cfg.seed, epoch, balanced=cfg.class_balance == "sampler")
        total_loss, seen, start = 0.0, 0, time.perf_counter()
        loader = device_batches(data.images, data.labels, order, cfg.batch_size, self.device, cfg.channels_last, ranks)
        # on a terminal, the epoch as it goes (images/s, time left); a log gets the epoch's one line alone
        bar = progress(total=len(order), desc=f"epoch {epoch}", unit="img", leave=False, terminal_only=True,
                       disable=not ranks.is_main)
        for batch, (positions, batch_total, x, y) in enumerate(loader):
            x = self.augment(x, self.generator, positions, batch_total)
            # this rank's share of the global batch's loss: DDP averages the ranks' gradients, so each
            # rank's mean loss is weighed by its share
            loss_share = 1.0
            if ranks.distributed:
                weight = _batch_weight(y, loss_fn)
                loss_share = float(weight / sum_over_ranks(weight.clone(), ranks))
            try:
                loss = step(step_model, x, y, loss_fn, self.optimizer, self.device, cfg.amp,
                            scale=loss_share * ranks.world if ranks.distributed else 1.0)
            except NonFiniteLoss as bad:
                raise TlpipeError(f"finetune: the loss became {bad.value} at epoch {epoch}, batch {batch}. "
                                  f"Lower finetune.lr (now {cfg.lr}) or check the input images.") from None
            self.scheduler.step()
            if self.average is not None:
                self.average.update_parameters(model)
            total_loss += loss.item() * loss_share * batch_total
            seen += len(y)
            bar.update(batch_total)
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        bar.close()
        elapsed = time.perf_counter() - start
        total_loss, seen = sum_over_ranks(torch.tensor([total_loss, seen], dtype=torch.float64), ranks).tolist()
        return {"train_loss": total_loss / max(seen, 1), "train_images_per_s": seen / max(elapsed, 1e-9)}

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "random": random_states(self.generator),
                "average": self.average.state_dict() if self.average is not None else None}

    def restore(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.average is not None:
            self.average.load_state_dict(saved["average"])
        restore_random_states(self.generator, saved["random"])


@dataclass
class _ProbeGuard:
    """The frozen epochs train the probe (fitted and calibrated on plain features) on augmented images
    with a smoothed loss and can end worse: they are undone when the last frozen epoch's validation
    loss is above the probe's."""
    enabled: bool
    last_frozen_epoch: int
    start_head: dict | None = None  # the probe head, as training started

    def undoes(self, epoch: int, row: dict, start: dict | None) -> bool:
        return self.enabled and epoch == self.last_frozen_epoch and row["val_loss"] > start["val_loss"]

    def restore(self, model: Classifier, validated: Classifier) -> None:
        for target in {id(model): model, id(validated): validated}.values():
            target.head.load_state_dict(self.start_head)
