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
CAPTION_LINES = 3
LINE = 12
CAPTION = CAPTION_LINES * LINE + 4
MIN_CAM_SIDE = 7  # Grad-CAM on the last feature map at least this wide: at 64 px the last one is 2x2, one blob


def top_losses(predictions: pd.DataFrame, classes: list[str], n: int) -> pd.DataFrame:
    """The `n` rows with the highest cross-entropy (-log p(true class)), worst first."""
    probs = probabilities(predictions, classes)
    true = label_indices(predictions, classes)
    table = predictions.assign(row=np.arange(len(predictions)),
                               loss=-np.log(np.clip(probs[np.arange(len(true)), true], 1e-12, 1)),
                               confidence=probs.max(1))
    return table.sort_values(["loss", "path"], ascending=[False, True]).head(n)


def most_confused(predictions: pd.DataFrame, n: int = 10) -> list[dict]:
    """The `n` (true, predicted) class pairs most often confused, with counts, most first (fastai's
    `most_confused`): where a model goes wrong, in one short table."""
    wrong = predictions[predictions["label"] != predictions["predicted"]]
    counts = wrong.groupby(["label", "predicted"]).size().reset_index(name="images")
    counts = counts.sort_values(["images", "label", "predicted"], ascending=[False, True, True]).head(n)
    return [{"true": t, "predicted": p, "images": int(k)} for t, p, k in counts.itertuples(index=False)]


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
    activation = cam_layer(captured)
    weights = activation.grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * activation).sum(1, keepdim=True)).detach()
    cam = nn.functional.interpolate(cam, size=images.shape[1:3], mode="bilinear", align_corners=False)[:, 0]
    top = cam.flatten(1).max(1).values.clamp_min(1e-12)
    return (cam / top[:, None, None]).numpy()


def cam_layer(activations: list[torch.Tensor]) -> torch.Tensor:
    """The deepest block output at least MIN_CAM_SIDE wide (at small inputs the last is 2x2); else the widest."""
    wide = [a for a in activations if min(a.shape[2:]) >= MIN_CAM_SIDE]
    return wide[-1] if wide else max(activations, key=lambda a: a.shape[2] * a.shape[3])


def _heat_colours(heat: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB uint8 on a blue-green-yellow-red ramp."""
    stops = np.array([[0, 0, 128], [0, 128, 255], [0, 220, 120], [255, 230, 0], [255, 40, 0]], dtype=float)
    position = heat * (len(stops) - 1)
    low = np.floor(position).astype(int).clip(0, len(stops) - 2)
    frac = (position - low)[..., None]
    return (stops[low] * (1 - frac) + stops[low + 1] * frac).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    return (image * (1 - alpha) + _heat_colours(heat) * alpha).astype(np.uint8)


def _fit(draw: ImageDraw.ImageDraw, line: str, width: int) -> str:
    """The line, cut with an ellipsis where it would run past `width` pixels."""
    if draw.textlength(line) <= width:
        return line
    while line and draw.textlength(line + "...") > width:
        line = line[:-1]
    return line + "..."


def grid(tiles: list[tuple[np.ndarray, str]], columns: int = 4, colour_scale: bool = False) -> Image.Image:
    """Images with a caption of up to three lines under each (each line cut to the tile's width),
    `columns` per row; `colour_scale` adds the Grad-CAM colour ramp as a legend at the bottom."""
    rows = max(1, -(-len(tiles) // columns))
    legend = 34 if colour_scale else 0
    sheet = Image.new("RGB", (columns * TILE, rows * (TILE + CAPTION) + legend), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (pixels, caption) in enumerate(tiles):
        x, y = (i % columns) * TILE, (i // columns) * (TILE + CAPTION)
        sheet.paste(Image.fromarray(pixels).resize((TILE - 4, TILE - 4), Image.Resampling.BILINEAR), (x + 2, y + 2))
        for n, line in enumerate(caption.splitlines()[:CAPTION_LINES]):
            draw.text((x + 4, y + TILE + n * LINE), _fit(draw, line, TILE - 8), fill="black")
    if colour_scale:
        _colour_scale(sheet, draw, top=rows * (TILE + CAPTION) + 4)
    return sheet


def _colour_scale(sheet: Image.Image, draw: ImageDraw.ImageDraw, top: int) -> None:
    width = min(sheet.width - 20, 2 * TILE)
    ramp = _heat_colours(np.tile(np.linspace(0, 1, width), (12, 1)))
    sheet.paste(Image.fromarray(ramp), (10, top))
    draw.text((10, top + 14), "Grad-CAM 0: no weight", fill="black")
    label = "1: most weight on the prediction"
    draw.text((10 + width - draw.textlength(label), top + 14), label, fill="black")


def gradcam_examples(predictions: pd.DataFrame, classes: list[str], per_class: int) -> pd.DataFrame:
    """Per true class, the first `2 * per_class` test images in path order.

    A fixed rule that does not depend on the model, so every revision's sheet shows the same
    images and `dvc plots diff` compares them tile by tile; the captions say which are wrong."""
    table = predictions.assign(row=np.arange(len(predictions)))
    picked = [table[table["label"] == label].sort_values("path").head(2 * per_class) for label in classes]
    return pd.concat(picked)
