import numpy as np
import pandas as pd
import torch

from tlpipe.model.backbones import create_backbone
from tlpipe.model.classifier import Classifier, make_head
from tlpipe.use.plots import reliability_rows
from tlpipe.use.predictions import label_indices, probabilities
from tlpipe.use.report import gradcam_examples, grad_cam, grid, most_confused, top_losses


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


def test_most_confused_counts_each_true_predicted_pair_most_first():
    table = pd.DataFrame({"label": ["a", "a", "a", "b", "b", "c", "c"],
                          "predicted": ["b", "b", "a", "a", "c", "a", "c"]})
    assert most_confused(table) == [{"true": "a", "predicted": "b", "images": 2},
                                    {"true": "b", "predicted": "a", "images": 1},
                                    {"true": "b", "predicted": "c", "images": 1},
                                    {"true": "c", "predicted": "a", "images": 1}]
    assert most_confused(table, n=1) == [{"true": "a", "predicted": "b", "images": 2}]
    assert most_confused(table[table["label"] == table["predicted"]]) == []


def test_reliability_bins_count_every_prediction():
    table, classes = predictions(), ["cat", "dog"]
    rows = reliability_rows(label_indices(table, classes), probabilities(table, classes), bins=5)
    assert sum(r["count"] for r in rows) == 4
    top, = [r for r in rows if r["confidence"] > 0.8]
    assert np.isclose(top["confidence"], 0.85) and top["accuracy"] == 0.5 and top["count"] == 2


def test_gradcam_examples_are_the_same_whatever_the_model_predicts():
    picked = gradcam_examples(predictions(), ["cat", "dog"], 1)
    assert list(picked["path"]) == ["a", "b", "c", "d"]
    other_model = predictions().assign(predicted=["dog", "cat", "cat", "dog"], prob_cat=[0.1, 0.9, 0.6, 0.2],
                                       prob_dog=[0.9, 0.1, 0.4, 0.8])
    assert list(gradcam_examples(other_model, ["cat", "dog"], 1)["path"]) == ["a", "b", "c", "d"]
    assert list(gradcam_examples(predictions(), ["cat", "dog"], 1)["row"]) == [0, 1, 2, 3]


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
    assert sheet.size == (4 * 160, 2 * (160 + 40))


def test_captions_stay_inside_their_tile_and_gradcam_has_a_colour_scale():
    from PIL import ImageDraw

    caption = "true NORMAL\npred PNEUMONIA\nP(PNEUMONIA) 0.97 vs 0.25 and then a much longer tail"
    sheet = grid([(np.zeros((10, 10, 3), np.uint8), caption)] * 2, columns=2, colour_scale=True)
    pixels = np.asarray(sheet)
    # Nothing drawn across the boundary between the two tiles' caption areas.
    assert (pixels[160:200, 158:162] == 255).all()
    assert ImageDraw.Draw(sheet).textlength("P(PNEUMONIA) 0.97 vs 0.25") <= 152
    assert sheet.size == (2 * 160, 160 + 40 + 34)
    legend = pixels[160 + 40 + 4:160 + 40 + 16, 10:300]
    assert legend[:, 0].mean(0)[2] > legend[:, 0].mean(0)[0]      # blue at 0 ...
    assert legend[:, -1].mean(0)[0] > legend[:, -1].mean(0)[2]     # ... red at 1


def test_grad_cam_at_small_inputs_uses_a_map_wider_than_one_blob():
    from tlpipe.use.report import cam_layer

    maps = [torch.zeros(1, 8, side, side) for side in (32, 16, 8, 4, 2)]  # block outputs at a 64 px input
    assert cam_layer(maps).shape[2] == 8
    assert cam_layer([torch.zeros(1, 8, 7, 7), torch.zeros(1, 8, 7, 7)]) is not None
    assert cam_layer([torch.zeros(1, 8, 4, 4), torch.zeros(1, 8, 2, 2)]).shape[2] == 4  # none wide enough: widest
