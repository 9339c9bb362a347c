import numpy as np
import pandas as pd
import torch

from tlpipe.model.backbones import create_backbone
from tlpipe.model.classifier import Classifier, make_head
from tlpipe.use.plots import reliability_rows
from tlpipe.use.predictions import label_indices, probabilities
from tlpipe.use.report import gradcam_examples, grad_cam, grid, top_losses


def predictions() -> pd.DataFrame:
    return pd.DataFrame({
        "path": ["a", "b", "c", "d"],
        "label": ["cat", "cat", "dog", "dog"],
        "predicted": ["cat", "dog", "dog", "cat"],
        "prob_cat": [0.9, 0.2, 0.3, 0.6],
        "prob_dog": [0.1, 0.8, 0.7, 0.4],
    })


def test_top_losses_are_the_confidently_wrong_ones_first():
    worst = top_losses(predictions(), ["cat", "dog"], 2)
    assert list(worst["path"]) == ["b", "d"] and list(worst["row"]) == [1, 3]
    assert np.isclose(worst["loss"].iloc[0], -np.log(0.2))


def test_reliability_bins_count_every_prediction():
    table, classes = predictions(), ["cat", "dog"]
    rows = reliability_rows(label_indices(table, classes), probabilities(table, classes), bins=5)
    assert sum(r["count"] for r in rows) == 4
    top, = [r for r in rows if r["confidence"] > 0.8]
    assert np.isclose(top["confidence"], 0.85) and top["accuracy"] == 0.5 and top["count"] == 2


def test_gradcam_examples_pick_right_and_wrong_per_class():
    picked = gradcam_examples(predictions(), ["cat", "dog"], 1)
    assert list(picked["path"]) == ["a", "b", "c", "d"]


def test_grad_cam_gives_one_normalised_map_per_image():
    torch.manual_seed(0)
    backbone = create_backbone("efficientnet_lite0", "none")
    model = Classifier(backbone.body, make_head(backbone.num_features, 2), backbone.mean, backbone.std)
    images = np.random.default_rng(0).integers(0, 255, size=(3, 64, 64, 3), dtype=np.uint8)
    heat = grad_cam(model, images, [0, 1, 1])
    assert heat.shape == (3, 64, 64) and heat.min() >= 0 and np.isclose(heat.max(), 1, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())


def test_grid_lays_out_tiles_with_captions():
    sheet = grid([(np.zeros((10, 10, 3), np.uint8), "true a\npred b p=0.90")] * 5, columns=4)
    assert sheet.size == (4 * 160, 2 * (160 + 34))
