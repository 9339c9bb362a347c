"""One optimisation step, and the batch order it is fed in: finetune, the MLP/attention head and
the learning-rate finder all train through `step`, so a change to how a batch is trained (mixed
precision, gradient scaling, a check) is made once. The order is train.order.epoch_order cut by
runtime.training_batches: the head and the lr finder take it from `batch_rows`; finetune's loader
(train.loader.device_batches) cuts the same order the same way and hands each DDP rank its share. The temperature fit (choose.py, LBFGS on one
scalar) and Grad-CAM (use/report.py, gradients without a step) are not training and stay apart."""

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from tlpipe.runtime import autocast, training_batches
from tlpipe.train.order import epoch_order

CPU = torch.device("cpu")


class NonFiniteLoss(ArithmeticError):
    """The batch's loss is inf or nan; nothing was stepped. Each trainer says what to change."""

    def __init__(self, value: float):
        super().__init__(f"the loss became {value}")
        self.value = value


def batch_rows(labels: np.ndarray, seed: int, epoch: int, batch_size: int, balanced: bool = False
               ) -> Iterator[np.ndarray]:
    """The row indices of each training batch of one epoch, in the order every trainer uses
    (train.order.epoch_order), cut as training batches are (no last batch of one image)."""
    order = epoch_order(labels, seed, epoch, balanced=balanced)
    for part in training_batches(len(order), batch_size):
        yield order[part]


def decay_groups(params, name: str = "", **options) -> list[dict]:
    """`params` as optimizer groups: the weights, and the one-dimensional tensors (biases and
    normalisation scales) without weight decay, as torchvision's reference recipes and timm do:
    shrinking those towards 0 regularises nothing and moves the normalisation pretrained weights
    rely on. `options` (e.g. lr) go into both groups; an empty group is left out."""
    params = list(params)
    groups = [{"params": [p for p in params if p.ndim > 1], "name": name, **options},
              {"params": [p for p in params if p.ndim <= 1], "name": f"{name}-no-decay", **options,
               "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
         device: torch.device = CPU, amp: bool = False, scale: float = 1.0) -> torch.Tensor:
    """Forward, loss, backward and one optimizer step on a batch; the (unscaled, detached) loss.

    `scale` multiplies the loss before backward (under DDP, this rank's share of the global batch
    times the world size, as DDP averages the ranks' gradients). A batch with no rows (a rank's empty
    share) still runs forward and backward, with a zero loss, so DDP's gradient exchange stays in step.
    Raises NonFiniteLoss before any gradient is taken."""
    with autocast(device, amp):
        out = model(x).float()
        loss = loss_fn(out, y) if len(y) else out.sum() * 0.0
    if not torch.isfinite(loss):
        raise NonFiniteLoss(loss.item())
    optimizer.zero_grad(set_to_none=True)
    (loss * scale if scale != 1.0 else loss).backward()
    optimizer.step()
    return loss.detach()
