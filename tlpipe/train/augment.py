"""Batched augmentation on image tensors, on whatever device they live on.

torchvision's v2 transforms draw one set of random parameters per call, i.e. per batch; here
every image gets its own crop, flip and rotation in one `affine_grid` + `grid_sample` pass.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    scale_min: float = 0.6      # random resized crop: smallest share of the area kept
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    rotation: float = 10.0      # degrees, +-
    jitter: float = 0.2         # brightness and contrast, +-

    def __call__(self, x: torch.Tensor, generator: torch.Generator, positions=None, total: int | None = None,
                 ) -> torch.Tensor:
        """x: float (N, 3, H, W) in [0, 1] -> augmented, same shape and device.

        Under several processes x is the images at `positions` of a global batch of `total`: the
        random draws are those of the whole batch (the same generator on every rank), each image
        taking its own, so one and N processes augment every image alike."""
        n = x.shape[0]
        total = n if total is None else total
        if n == 0 and total:  # a rank with no image of this (small, last) batch draws all the same: in step
            self(torch.zeros(total, 3, 2, 2), generator)
            return x
        take = slice(None) if positions is None else torch.as_tensor(positions, dtype=torch.long)

        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.rand(total, generator=generator, dtype=torch.float64)[take] * (high - low) + low

        area = uniform(self.scale_min, 1.0)
        log_ratio = uniform(math.log(self.ratio[0]), math.log(self.ratio[1])).exp()
        width = (area * log_ratio).sqrt().clamp(max=1.0)
        height = (area / log_ratio).sqrt().clamp(max=1.0)
        shift_x = uniform(-1, 1) * (1 - width)
        shift_y = uniform(-1, 1) * (1 - height)
        angle = uniform(-self.rotation, self.rotation) * math.pi / 180
        mirror = (torch.where(torch.rand(total, generator=generator)[take] < 0.5, -1.0, 1.0).double() if self.flip
                  else torch.ones(n, dtype=torch.float64))
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack([
            torch.stack([cos * width * mirror, -sin * height, shift_x], dim=1),
            torch.stack([sin * width * mirror, cos * height, shift_y], dim=1),
        ], dim=1).to(x.device, x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if self.jitter > 0:
            brightness = uniform(1 - self.jitter, 1 + self.jitter).to(x.device, x.dtype).view(n, 1, 1, 1)
            contrast = uniform(1 - self.jitter, 1 + self.jitter).to(x.device, x.dtype).view(n, 1, 1, 1)
            mean = out.mean(dim=(1, 2, 3), keepdim=True)
            out = ((out - mean) * contrast + mean) * brightness
        return out.clamp_(0, 1).contiguous(memory_format=torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
