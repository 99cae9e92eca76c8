"""The conv4 backbone the bundled image suites share, the regression MLPs' non-linearities, and the plain
MLP builder and episode widths of the model-based regression learners (a helper module, not a plugin).

conv4 is the 4 x [3x3 conv, batch norm, ReLU, 2x2 max-pool] network of Finn et al. 2017 (MAML, section
5.2) and Snell et al. 2017 (ProtoNets, section 3.2), flattened into a linear classifier. Batch norm uses
batch statistics always (`track_running_stats=False`), as MAML's code does at train and test time (the
transductive setting): no running buffers, so it works under `torch.func.functional_call` and `vmap`
over tasks, and a task's statistics never leak into another's. Without `pool`, stride-2 convolutions
replace the max-pools and the last feature map is averaged (MAML's no-max-pool Omniglot variant,
cbfinn/maml `max_pool=False`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus}  # keys: regression.ACTIVATIONS


def activation(name: str) -> nn.Module:
    """A new module of the non-linearity `name` (one of `metaharness_plugins.regression.ACTIVATIONS`)."""
    return _ACTIVATIONS[name]()


def regression_widths(suite: Any, algorithm: str) -> tuple[int, int, torch.dtype]:
    """(x width, y width, dtype) of a regression suite's episodes, read from one training episode drawn
    with a generator of its own (the cell's random streams are untouched): what a learner that builds its
    own network, not the suite's model, sizes it by. A TypeError, naming `algorithm`, unless the episodes
    are shaped [tasks, points, features]."""
    probe = suite.sample(1, torch.Generator().manual_seed(0), "train")
    if probe.support_x.dim() != 3 or probe.support_y.dim() != 3:
        raise TypeError(f"{algorithm} needs regression episodes shaped [tasks, points, features]; the suite "
                        f"gave support_x {tuple(probe.support_x.shape)} and support_y "
                        f"{tuple(probe.support_y.shape)}")
    return probe.support_x.shape[-1], probe.support_y.shape[-1], probe.support_x.dtype


def mlp(inputs: int, widths: list[int], activation: str = "relu") -> nn.Sequential:
    """Linear layers of the given `widths` on `inputs` features, the non-linearity `activation` between
    them (none after the last)."""
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        layers.append(nn.Linear(inputs if i == 0 else widths[i - 1], width))
        if i < len(widths) - 1:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def conv4(in_channels: int, filters: int, ways: int, image_size: int, pool: bool = True) -> nn.Sequential:
    """conv4 with `filters` channels per layer on `in_channels` x `image_size`^2 images, `ways` logits."""
    layers: list[nn.Module] = []
    for i in range(4):
        channels = in_channels if i == 0 else filters
        layers += [nn.Conv2d(channels, filters, 3, stride=1 if pool else 2, padding=1),
                   nn.BatchNorm2d(filters, track_running_stats=False), nn.ReLU()]
        layers += [nn.MaxPool2d(2)] if pool else []
    side = image_size // 16 if pool else 1
    layers += [nn.Flatten()] if pool else [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers, nn.Linear(filters * side * side, ways))
