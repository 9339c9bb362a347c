"""The extract-features stage: a frozen backbone over the cached images, per split."""

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from tlpipe.runtime import autocast, batches, to_float_images


@torch.inference_mode()
def extract_features(model: nn.Module, images: np.ndarray, batch_size: int, device: torch.device,
                     flip_tta: bool = False, channels_last: bool = True, desc: str = "features") -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, F) float32 from `model` (normalisation included), eval mode; a model
    that returns feature maps gives (N, C, h, w)."""
    model.eval().to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    chunks = []
    for part in tqdm(list(batches(len(images), batch_size)), desc=desc, unit="batch"):
        x = to_float_images(images[part], device, channels_last)
        with autocast(device):
            out = model(x)
            if flip_tta:  # a feature map of the mirror is mirrored back, so positions line up
                mirrored = model(x.flip(3))
                out = (out + (mirrored.flip(3) if mirrored.ndim == 4 else mirrored)) / 2
        chunks.append(out.float().cpu().numpy())
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(chunks)
