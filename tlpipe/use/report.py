"""Pictures of the fine-tuned model on the test split: the images it got most wrong, Grad-CAM
heatmaps of where it looked, and a reliability diagram (calibration)."""

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw
from torch import nn

from tlpipe.model.backbones import block_groups
from tlpipe.model.classifier import Classifier
from tlpipe.runtime import to_float_images
from tlpipe.use.predictions import label_indices, probabilities

TILE = 160
CAPTION = 34


def top_losses(predictions: pd.DataFrame, classes: list[str], n: int) -> pd.DataFrame:
    """The `n` rows with the highest cross-entropy (-log p(true class)), worst first."""
    probs = probabilities(predictions, classes)
    true = label_indices(predictions, classes)
    table = predictions.assign(row=np.arange(len(predictions)),
                               loss=-np.log(np.clip(probs[np.arange(len(true)), true], 1e-12, 1)),
                               confidence=probs.max(1))
    return table.sort_values(["loss", "path"], ascending=[False, True]).head(n)


def grad_cam(model: Classifier, images: np.ndarray, target: list[int]) -> np.ndarray:
    """Grad-CAM on the body's last spatial feature map: (N, H, W) heatmaps in [0, 1]."""
    captured: list[torch.Tensor] = []

    def keep_spatial(_module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            output.retain_grad()
            captured.append(output)

    hooks = [group.register_forward_hook(keep_spatial) for group in block_groups(model.body)]
    try:
        model.eval()
        x = to_float_images(images, torch.device("cpu"), channels_last=False)
        with torch.enable_grad():
            logits = model(x)
            logits[torch.arange(len(target)), torch.tensor(target)].sum().backward()
    finally:
        for hook in hooks:
            hook.remove()
        model.zero_grad(set_to_none=True)
    activation = captured[-1]
    weights = activation.grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * activation).sum(1, keepdim=True)).detach()
    cam = nn.functional.interpolate(cam, size=images.shape[1:3], mode="bilinear", align_corners=False)[:, 0]
    top = cam.flatten(1).max(1).values.clamp_min(1e-12)
    return (cam / top[:, None, None]).numpy()


def _heat_colours(heat: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB uint8 on a blue-green-yellow-red ramp."""
    stops = np.array([[0, 0, 128], [0, 128, 255], [0, 220, 120], [255, 230, 0], [255, 40, 0]], dtype=float)
    position = heat * (len(stops) - 1)
    low = np.floor(position).astype(int).clip(0, len(stops) - 2)
    frac = (position - low)[..., None]
    return (stops[low] * (1 - frac) + stops[low + 1] * frac).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    return (image * (1 - alpha) + _heat_colours(heat) * alpha).astype(np.uint8)


def grid(tiles: list[tuple[np.ndarray, str]], columns: int = 4) -> Image.Image:
    """Images with a caption of up to two lines under each, `columns` per row."""
    rows = max(1, -(-len(tiles) // columns))
    sheet = Image.new("RGB", (columns * TILE, rows * (TILE + CAPTION)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (pixels, caption) in enumerate(tiles):
        x, y = (i % columns) * TILE, (i // columns) * (TILE + CAPTION)
        sheet.paste(Image.fromarray(pixels).resize((TILE - 4, TILE - 4), Image.Resampling.BILINEAR), (x + 2, y + 2))
        draw.multiline_text((x + 4, y + TILE), caption, fill="black", spacing=2)
    return sheet


def gradcam_examples(predictions: pd.DataFrame, classes: list[str], per_class: int) -> pd.DataFrame:
    """Per true class, up to `per_class` right and `per_class` wrong test images (most confident first)."""
    table = predictions.assign(row=np.arange(len(predictions)),
                               confidence=probabilities(predictions, classes).max(1),
                               correct=predictions["label"] == predictions["predicted"])
    picked = []
    for label in classes:
        for correct in (True, False):
            rows = table[(table["label"] == label) & (table["correct"] == correct)]
            picked.append(rows.sort_values(["confidence", "path"], ascending=[False, True]).head(per_class))
    return pd.concat(picked)
