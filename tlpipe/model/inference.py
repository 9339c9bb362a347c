"""Inference: cached uint8 images through a classifier, features through a head, in batches."""

import numpy as np
import torch
from torch import nn

from tlpipe.distributed import SINGLE, Ranks, map_batches
from tlpipe.runtime import autocast, batches, to_float_images


@torch.inference_mode()
def predict_logits(model: nn.Module, images: np.ndarray, batch_size: int, device: torch.device,
                   channels_last: bool = True, flip_tta: bool = False, amp: bool = True,
                   ranks: Ranks = SINGLE) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, classes) float32 logits on the CPU; with flip_tta the log of the
    mean probability of each image and its mirror. Under several processes (`ranks`) each computes
    its share of the batches and every one returns all the logits."""
    model.eval().to(device)

    def logits_of(part: slice) -> torch.Tensor:
        x = to_float_images(images[part], device, channels_last)
        with autocast(device, amp):
            logits = model(x).float()
            if flip_tta:
                logits = torch.log((logits.softmax(1) + model(x.flip(3)).float().softmax(1)) / 2)
        return logits.cpu()

    # each batch is copied into one array made at the first: per-batch tensors kept until the end
    # would sit between the freed activation buffers and push the heap up by more than their size
    out = None
    for part, logits in map_batches(logits_of, list(batches(len(images), batch_size)), ranks):
        if out is None:
            out = torch.empty((len(images), *logits.shape[1:]), dtype=logits.dtype)
        out[part] = logits
    return out if out is not None else torch.zeros(0)


def image_probabilities(model: nn.Module, images: np.ndarray, batch_size: int, device: torch.device,
                        flip_tta: bool = False, ranks: Ranks = SINGLE) -> np.ndarray:
    """Class probabilities (float64) of cached images (under several processes: see predict_logits)."""
    return torch.softmax(predict_logits(model, images, batch_size, device, flip_tta=flip_tta, ranks=ranks),
                         1).double().numpy()


@torch.no_grad()
def feature_probabilities(head: nn.Module, features: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Class probabilities (float64) of a head on frozen features (or feature maps, for attention heads),
    an array or a memory map, read in batches."""
    head.eval()
    parts = [torch.softmax(head(torch.from_numpy(np.array(features[part], dtype=np.float32))).double(), dim=1)
             for part in batches(len(features), batch_size)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, 0))
