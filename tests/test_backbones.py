"""torchvision backbones beyond the offline ones: VGG-16, ResNet-50 and Inception-v3 (random init,
no download) through every stage, Inception's auxiliary output, feature maps for attention."""

import json

import pytest
import torch

from conftest import STAGES, make_image_tree, ran_stages, run, set_params
from tlpipe.data.cache import load_split
from tlpipe.model.backbones import create_backbone
from tlpipe.model.classifier import Classifier
from tlpipe.model.modelfile import load_model
from torch import nn


def test_inception_training_forward_gives_features_alone():
    backbone = create_backbone("inception_v3", "none")
    assert backbone.input_size == 299 and backbone.num_features == 2048
    model = Classifier(backbone.body, nn.Linear(2048, 2), backbone.mean, backbone.std).train()
    out = model(torch.rand(2, 3, 80, 80))  # training mode: torchvision's Inception would return (logits, aux)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 2)
    assert not any("AuxLogits" in name for name in model.state_dict())


def test_a_body_returning_a_tuple_gives_its_first_output():
    class TwoOutputs(nn.Module):
        def forward(self, x):
            return x.mean((2, 3)), x.amax((2, 3))

    model = Classifier(TwoOutputs(), nn.Identity(), (0.0,) * 3, (1.0,) * 3)
    x = torch.rand(2, 3, 4, 4)
    assert torch.equal(model(x), x.mean((2, 3)))


@pytest.mark.parametrize("name, channels", [("resnet50", 2048), ("vgg16", 512)])
def test_feature_map_of_torchvision_backbones(name, channels):
    backbone = create_backbone(name, "none", spatial=True)
    assert backbone.num_features == channels
    with torch.no_grad():
        maps = backbone.body.eval()(torch.rand(1, 3, 64, 64))
    assert maps.shape == (1, channels, 2, 2)


@pytest.mark.slow
@pytest.mark.parametrize("name, size", [("vgg16", 32), ("resnet50", 32), ("inception_v3", 80)])
def test_torchvision_backbone_through_every_stage(dvc_project, tmp_path, name, size):
    project = dvc_project
    make_image_tree(tmp_path / "images", {"circle": 12, "square": 12}, prefix=name)
    set_params(project, **{
        "data.source": f"path:{tmp_path / 'images'}", "resize.size": size, "backbone.name": name,
        "backbone.weights": "none", "finetune.epochs": 1, "finetune.batch_size": 8, "features.batch_size": 8,
        "evaluate.batch_size": 8, "report.top_losses": 2, "report.gradcam_per_class": 1,
        "finetune.strategy": "last_blocks", "finetune.unfreeze": 1,
    })
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "pipeline"], project)
    output = run(["dvc", "repro"], project).stdout
    assert ran_stages(output) == STAGES
    # a cache size other than the weights' (Inception 299, the others 224) is allowed and said once;
    # 80 px is near Inception's smallest input (75), which its auxiliary head and pooling still take
    assert output.count("was trained on") == 1, output
    assert load_split(project / "data" / "cache", "train")[0].shape[1:] == (size, size, 3)
    model, meta = load_model(project / "models" / "model.pt")
    assert meta["backbone"] == name and meta["input_size"] == size
    evaluated = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert evaluated["finetune"]["test"]["n"] > 0
