"""`resize.size: auto`: the backbone's input size from its weights' metadata, capped by the source."""

import io

from PIL import Image

from tlpipe.data.raw import RawData
from tlpipe.data.resize import auto_size, source_side
from tlpipe.model.backbones import input_size


def test_input_size_comes_from_the_weights_metadata_without_loading_them():
    assert input_size("efficientnet_lite0") == 224
    assert input_size("efficientnet_lite2") == 260
    assert input_size("inception_v3") == 299  # torchvision's weights metadata, no download
    assert input_size("resnet50") == 224


def test_auto_is_the_backbone_size_up_to_128_capped_by_the_source_and_never_below_64():
    assert auto_size(224, 1024) == 128   # large photos: the backbone's size, up to 128 px
    assert auto_size(96, 1024) == 96     # a backbone made for less: its own size
    assert auto_size(299, 224) == 128
    assert auto_size(224, 100) == 128    # rounded up to a multiple of 32
    assert auto_size(224, 70) == 96
    assert auto_size(224, 8) == 64       # 8x8 digits: 2x the network stride, not 224
    assert auto_size(224, None) == 128   # nothing readable: the backbone's size, up to 128 px
    assert auto_size(224, 1024, minimum=224) == 224  # a ViT takes its whole input size


def test_source_side_is_the_median_longer_side(tmp_path):
    root = tmp_path / "raw" / "set" / "a"
    root.mkdir(parents=True)
    for i, (w, h) in enumerate([(40, 30), (50, 90), (120, 60)]):
        buffer = io.BytesIO()
        Image.new("RGB", (w, h)).save(buffer, format="PNG")
        (root / f"{i}.png").write_bytes(buffer.getvalue())
    paths = [f"set/a/{i}.png" for i in range(3)]
    assert source_side(RawData(tmp_path / "raw"), paths) == 90
