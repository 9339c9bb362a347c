"""Which part of the network finetune trains: `finetune.strategy`.

- `head`: the backbone stays frozen for every epoch; only the head trains (the "freeze the base" row);
- `last_blocks`: after `freeze_epochs`, the last `finetune.unfreeze` block groups train as well;
- `all`: after `freeze_epochs`, every block trains (with the discriminative rates of `layer_decay`);
- `auto`: one of the three, from the training set's size and how well the linear probe already does
  on validation (the size/similarity guidance of the transfer-learning notes: a small set the frozen
  features already separate keeps them; a large set, or features far from the task, trains more).
  What it picked and why goes into metrics/finetune.json.
"""

from torch import nn

from tlpipe.errors import TlpipeError

from tlpipe.model.backbones import block_groups
from tlpipe.model.classifier import Classifier
from tlpipe.params import FinetuneParams

STRATEGIES = ("head", "last_blocks", "all", "auto")
SMALL_SET = 1000      # training images: below this a full fine-tune overfits easily
LARGE_SET = 10000     # ... at or above this every block can be trained safely
GOOD_PROBE = 0.90     # validation balanced accuracy of the probe: the frozen features already fit the task
WEAK_PROBE = 0.75     # ... below this the features are far from the task


def choose(strategy: str, n_train: int, probe_val_score: float | None) -> tuple[str, str]:
    """(the strategy to train with, why). Only `auto` looks at the data; the others are kept."""
    if strategy != "auto":
        return strategy, "set in params.yaml"
    score = "unknown" if probe_val_score is None else f"{probe_val_score:.3f}"
    facts = f"{n_train} training images, linear probe validation balanced accuracy {score}"
    if n_train >= LARGE_SET:
        return "all", f"{facts}: a large set (>= {LARGE_SET}) trains every block"
    if probe_val_score is None:
        return "last_blocks", f"{facts}: no probe score, the middle way"
    if n_train < SMALL_SET:
        if probe_val_score >= GOOD_PROBE:
            return "head", f"{facts}: a small set (< {SMALL_SET}) the frozen features already fit (>= {GOOD_PROBE})"
        return "last_blocks", f"{facts}: a small set (< {SMALL_SET}) whose frozen features fit less well"
    if probe_val_score < WEAK_PROBE:
        return "all", f"{facts}: a mid-sized set whose frozen features are far from the task (< {WEAK_PROBE})"
    return "last_blocks", f"{facts}: a mid-sized set ({SMALL_SET}..{LARGE_SET}) whose features fit fairly"


def trainable_blocks(model: Classifier, epoch: int, cfg: FinetuneParams) -> list[nn.Module]:
    """The block groups of the body that train in `epoch` under cfg.strategy (already chosen)."""
    blocks = block_groups(model.body)
    last = cfg.strategy == "last_blocks" and cfg.unfreeze != "all"
    if last and int(cfg.unfreeze) > len(blocks):  # checked from the first epoch on, frozen or not
        raise TlpipeError(f"finetune.unfreeze: {cfg.unfreeze} last block groups, but this backbone has "
                          f"{len(blocks)}; set at most {len(blocks)}, or finetune.strategy: all.")
    if cfg.strategy == "head" or epoch < cfg.freeze_epochs:
        return []
    return blocks[-int(cfg.unfreeze):] if last else blocks


def set_trainable(model: Classifier, epoch: int, cfg: FinetuneParams) -> None:
    """Freeze the body but the blocks this epoch trains, and set BatchNorm by `bn_policy`.

    `freeze` keeps every BatchNorm layer on its stored statistics (its scale and shift still
    learn once unfrozen): replacing ImageNet statistics by those of a few small batches changes
    every feature the head was fitted on, and on small data sets fine-tuning then collapses.
    `train` lets the BatchNorm layers of the trained blocks update their statistics.
    """
    train_blocks = trainable_blocks(model, epoch, cfg)
    model.body.requires_grad_(False)
    for block in train_blocks:
        block.requires_grad_(True)
    model.train()
    updating = {id(m) for block in train_blocks for m in block.modules()} if cfg.bn_policy == "train" else set()
    for module in model.body.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and id(module) not in updating:
            module.eval()
