import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose
from flbackdoor.config import ModelConfig
from flbackdoor.models import build_model, last_linear, penultimate

SHAPES = {"mnist": (1, 28, 10), "fashion_mnist": (1, 28, 10), "femnist": (1, 28, 10),
          "cifar10": (3, 32, 10)}


def model_cfg(name: str) -> ModelConfig:
    return OmegaConf.to_object(compose(f"model={name}")).model


@pytest.mark.parametrize("model", ["sun_emnist_cnn", "wu_mnist_cnn", "wu_fmnist_cnn", "wu_cifar_cnn"])
@pytest.mark.parametrize("dataset", list(SHAPES))
def test_forward_shape_on_every_dataset(model, dataset):
    channels, size, classes = SHAPES[dataset]
    net = build_model(model_cfg(model), channels, size, classes)
    out = net(torch.zeros(4, channels, size, size))
    assert out.shape == (4, classes)


def test_paper_architectures():
    sun = build_model(model_cfg("sun_emnist_cnn"), 1, 28, 10)
    convs = [m for m in sun.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64]
    drops = [m.p for m in sun.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops == [0.25, 0.5]
    dense = [m for m in sun.classifier if isinstance(m, torch.nn.Linear)]
    assert [d.out_features for d in dense] == [128, 10]

    wu = build_model(model_cfg("wu_mnist_cnn"), 1, 28, 10)
    assert wu.last_conv.out_channels == 50
    assert len([m for m in wu.classifier if isinstance(m, torch.nn.Linear)]) == 2
    fm = build_model(model_cfg("wu_fmnist_cnn"), 1, 28, 10)
    assert len([m for m in fm.features if isinstance(m, torch.nn.Conv2d)]) == 3
    assert len([m for m in fm.classifier if isinstance(m, torch.nn.Linear)]) == 2
    cf = build_model(model_cfg("wu_cifar_cnn"), 3, 32, 10)
    assert len([m for m in cf.features if isinstance(m, torch.nn.Conv2d)]) == 4
    assert len([m for m in cf.classifier if isinstance(m, torch.nn.Linear)]) == 3


@pytest.mark.parametrize("model", ["sun_emnist_cnn", "wu_mnist_cnn", "wu_fmnist_cnn", "wu_cifar_cnn"])
def test_penultimate_features_are_what_the_last_linear_reads(model):
    channels, size, classes = SHAPES["cifar10" if model == "wu_cifar_cnn" else "mnist"]
    net = build_model(model_cfg(model), channels, size, classes).eval()
    keys = list(net.state_dict())
    x = torch.randn(3, channels, size, size, requires_grad=True)
    z = penultimate(net, x)
    head = last_linear(net)
    assert head is [m for m in net.classifier if isinstance(m, torch.nn.Linear)][-1]
    assert z.shape == (3, head.in_features)
    assert torch.allclose(head(z), net(x), atol=1e-6)
    z.sum().backward()  # gradients reach the input through the features
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert list(net.state_dict()) == keys and not head._forward_pre_hooks
