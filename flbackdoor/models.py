"""The papers' networks, built for any dataset's input shape.

- ``sun_emnist_cnn``: Sun et al.'s EMNIST CNN: conv32, conv64, maxpool, dropout 0.25, dense128,
  dropout 0.5, dense out (TFF ``targeted_attack`` reference).
- ``wu_mnist_cnn``: Wu et al.'s MNIST net, 2 conv (20, 50 channels) + 2 FC; Table III's smaller
  8/16 variant is ``model.conv_channels=[8,16]``.
- ``wu_fmnist_cnn``: their Fashion-MNIST net, 3 conv + 2 FC.
- ``wu_cifar_cnn``: their CIFAR-10 net, 4 conv + 3 FC.

Every model exposes ``last_conv`` (the layer whose output channels federated pruning ranks)
and a ``channel_mask`` buffer (one 0/1 entry per channel of that layer, all ones until pruned):
a buffer, so the mask travels in the state dict to clients, aggregation, evaluation and
checkpoints without any of them knowing about pruning. ``penultimate(model, x)`` reads the
features the last Linear (the classifier head, ``last_linear``) receives, for attacks that work
in feature space (``attack=chameleon``).
"""

from __future__ import annotations

import torch
from torch import nn

from flbackdoor.config import ModelConfig
from flbackdoor.registries import MODELS


class ConvNet(nn.Module):
    """Conv blocks, then a dense head; the shape of all four papers' networks."""

    def __init__(
        self,
        features: nn.Sequential,
        in_shape: tuple[int, int, int],
        hidden: list[int],
        num_classes: int,
        dense_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.features = features
        with torch.no_grad():
            flat = features(torch.zeros(1, *in_shape)).numel()
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(flat, width), nn.ReLU()]
            if dense_dropout:
                layers.append(nn.Dropout(dense_dropout))
            flat = width
        layers.append(nn.Linear(flat, num_classes))
        self.classifier = nn.Sequential(*layers)
        self.register_buffer("channel_mask", torch.ones(self.last_conv.out_channels))

    @property
    def last_conv(self) -> nn.Conv2d:
        return [m for m in self.features if isinstance(m, nn.Conv2d)][-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Every layer after the last conv (activation, pooling, dropout) maps each channel on
        # its own and 0 to 0, so masking the features' output removes the pruned channels
        # exactly as zeroing their conv output would.
        return self.classifier(self.features(x) * self.channel_mask.view(1, -1, 1, 1))


# Buffers only the server sets (pruning): aggregation keeps the global model's values.
SERVER_BUFFERS = ("channel_mask",)


def with_channel_mask(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with an all-ones ``channel_mask`` when it predates the mask (older checkpoints
    and cached pretrained models), first as in ``ConvNet.state_dict()``."""
    if "channel_mask" in state:
        return state
    convs = [(int(k.split(".")[1]), v) for k, v in state.items()
             if k.startswith("features.") and k.endswith(".weight") and v.dim() == 4]
    if not convs:
        return state
    last = max(convs, key=lambda iv: iv[0])[1]
    return {"channel_mask": torch.ones(last.shape[0]), **state}


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's classifier head: its last ``nn.Linear``, on top of the penultimate features."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no Linear layer to read features below")
    return linears[-1]


def penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The penultimate features of batch ``x``: what the model's last Linear receives (in the
    model's current train/eval mode, gradients flowing). Read by a hook, so any model works and
    neither its state dict nor its forward changes."""
    seen: list[torch.Tensor] = []
    hook = last_linear(model).register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    try:
        model(x)
    finally:
        hook.remove()
    return seen[-1]


def _conv_pool_blocks(in_ch: int, widths: list[int], kernel: int, pool_every: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        layers += [nn.Conv2d(in_ch, width, kernel, padding=kernel // 2), nn.ReLU()]
        if (i + 1) % pool_every == 0:
            layers.append(nn.MaxPool2d(2))
        in_ch = width
    return layers


def build_model(cfg: ModelConfig, channels: int, image_size: int, num_classes: int) -> ConvNet:
    """The registered architecture ``cfg.name`` for images of this shape."""
    return MODELS[cfg.name](cfg, channels, image_size, num_classes)


@MODELS.register("sun_emnist_cnn")
def sun_emnist_cnn(cfg: ModelConfig, channels: int, image_size: int, num_classes: int) -> ConvNet:
    """Two 3x3 valid convs, one pool, dropout before and inside the head (TFF reference)."""
    drop = list(cfg.dropout) or [0.25, 0.5]
    layers: list[nn.Module] = []
    in_ch = channels
    for width in cfg.conv_channels:
        layers += [nn.Conv2d(in_ch, width, 3), nn.ReLU()]
        in_ch = width
    layers += [nn.MaxPool2d(2), nn.Dropout(drop[0])]
    return ConvNet(nn.Sequential(*layers), (channels, image_size, image_size), cfg.hidden,
                   num_classes, drop[1])


@MODELS.register("wu_mnist_cnn")
def wu_mnist_cnn(cfg: ModelConfig, channels: int, image_size: int, num_classes: int) -> ConvNet:
    """LeNet-style: 5x5 valid conv + pool after each conv."""
    layers: list[nn.Module] = []
    in_ch = channels
    for width in cfg.conv_channels:
        layers += [nn.Conv2d(in_ch, width, 5), nn.ReLU(), nn.MaxPool2d(2)]
        in_ch = width
    return ConvNet(nn.Sequential(*layers), (channels, image_size, image_size), cfg.hidden,
                   num_classes)


@MODELS.register("wu_fmnist_cnn")
def wu_fmnist_cnn(cfg: ModelConfig, channels: int, image_size: int, num_classes: int) -> ConvNet:
    features = nn.Sequential(*_conv_pool_blocks(channels, list(cfg.conv_channels), 3,
                                                pool_every=1))
    return ConvNet(features, (channels, image_size, image_size), cfg.hidden, num_classes)


@MODELS.register("wu_cifar_cnn")
def wu_cifar_cnn(cfg: ModelConfig, channels: int, image_size: int, num_classes: int) -> ConvNet:
    features = nn.Sequential(*_conv_pool_blocks(channels, list(cfg.conv_channels), 3,
                                                pool_every=2))
    return ConvNet(features, (channels, image_size, image_size), cfg.hidden, num_classes)
