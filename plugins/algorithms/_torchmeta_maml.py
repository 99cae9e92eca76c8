"""MAML through torchmeta's meta-modules (the `torchmeta` plugin registers it; imported when a cell builds it)."""

from __future__ import annotations

import importlib
import sys
from collections import OrderedDict
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from harness import TaskSuite
from harness.functional import Params, TaskLoopAlgorithm, snapshot
from metaharness_plugins.hparams import MAMLHparams

#: What torchmeta 1.8.0's torchmeta/datasets/utils.py imports from torchvision.datasets.utils at import
#: time; later torchvision releases dropped both.
REMOVED_TORCHVISION_HELPERS = ("_get_confirm_token", "_save_response_content")


def _removed_helper(name: str) -> Any:
    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"torchvision.datasets.utils.{name} was removed from torchvision and is only a placeholder, "
            "provided by metaharness so that torchmeta 1.8.0 imports: torchmeta's Google-Drive dataset "
            "downloads do not work with this torchvision (the harness uses only torchmeta.modules and "
            "torchmeta.utils.gradient_based)"
        )

    unavailable.__name__ = name
    return unavailable


def import_torchmeta() -> ModuleType:
    """Import torchmeta on a current torchvision.

    torchmeta 1.8.0's `torchmeta/datasets/utils.py` runs `from torchvision.datasets.utils import
    _get_confirm_token, _save_response_content` (private Google-Drive download helpers, which its
    `download_file_from_google_drive` calls) when torchmeta is imported, and `torchmeta/__init__.py`
    imports its datasets unconditionally; torchvision no longer has them, so the import fails with an
    ImportError before any of torchmeta's modules can be used. Where a name is missing, a placeholder
    is put in its place that raises a RuntimeError saying why if it is ever called: nothing the harness
    does reaches those downloads, and no torchmeta or torchvision code is copied here.
    """
    module = sys.modules.get("torchmeta")
    if module is not None:
        return module
    tv_utils = importlib.import_module("torchvision.datasets.utils")
    for name in REMOVED_TORCHVISION_HELPERS:
        if not hasattr(tv_utils, name):
            setattr(tv_utils, name, _removed_helper(name))
    return importlib.import_module("torchmeta")


def to_meta_module(module: nn.Module, torchmeta: ModuleType) -> nn.Module:
    """A torchmeta copy of one of the suites' models: nn.Sequential -> MetaSequential (children keep their
    names, so parameters keep theirs), Linear / Conv2d / BatchNorm1d / BatchNorm2d -> their Meta*
    counterparts with the same settings, dtype, device and weights; layers without parameters or
    buffers are shared as they are (MetaSequential calls them plainly). Anything else is a TypeError."""
    tm = torchmeta.modules
    if isinstance(module, nn.Sequential):
        return tm.MetaSequential(
            OrderedDict((name, to_meta_module(child, torchmeta)) for name, child in module.named_children())
        )
    kind = type(module)
    first = next(iter(module.parameters()), None)
    factory = {} if first is None else {"device": first.device, "dtype": first.dtype}
    if kind is nn.Linear:
        meta: nn.Module = tm.MetaLinear(
            module.in_features, module.out_features, bias=module.bias is not None, **factory
        )
    elif kind is nn.Conv2d:
        meta = tm.MetaConv2d(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
            **factory,
        )
    elif kind in (nn.BatchNorm1d, nn.BatchNorm2d):
        meta_kind = tm.MetaBatchNorm1d if kind is nn.BatchNorm1d else tm.MetaBatchNorm2d
        meta = meta_kind(
            module.num_features,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
            **factory,
        )
    elif not any(True for _ in module.parameters()) and not any(True for _ in module.buffers()):
        return module
    else:
        raise TypeError(
            "tm-maml and tm-fomaml rebuild the suite's model from torchmeta meta-modules and know "
            "nn.Sequential, Linear, Conv2d, BatchNorm1d, BatchNorm2d and layers without parameters; "
            f"got {kind.__name__}"
        )
    meta.load_state_dict(module.state_dict())
    return meta


class TorchmetaMAML(TaskLoopAlgorithm):
    """MAML / first-order MAML (`hparams.first_order`) with torchmeta's meta-modules and
    `gradient_update_parameters`; `self.model` is the torchmeta copy of the suite's model, and its
    parameters (named as in the suite's model) are the meta-parameters. States are parameter dicts."""

    def __init__(self, hparams: MAMLHparams, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
        torchmeta = import_torchmeta()
        self.update = importlib.import_module("torchmeta.utils.gradient_based").gradient_update_parameters
        super().__init__(hparams, to_meta_module(model, torchmeta), suite, backend)

    def inner_steps(
        self, params: Params, x: Tensor, y: Tensor, steps: int, first_order: bool
    ) -> list[Params]:
        """States after 0..steps of `gradient_update_parameters` at `inner_lr` on (x, y)."""
        states = [OrderedDict(params)]
        for _ in range(steps):
            loss = self.suite.loss(self.model(x, params=states[-1]), y)
            states.append(
                self.update(
                    self.model,
                    loss,
                    params=states[-1],
                    step_size=self.hparams.inner_lr,
                    first_order=first_order,
                )
            )
        return states

    def task_loss(self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        adapted = self.inner_steps(
            OrderedDict(self.model.meta_named_parameters()),
            sx,
            sy,
            self.hparams.inner_steps,
            self.hparams.first_order,
        )[-1]
        return self.suite.loss(self.model(qx, params=adapted), qy)

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int) -> list[Params]:
        """Parameters after 0..steps first-order `gradient_update_parameters` steps from detached copies
        of the weights; works under the caller's `torch.no_grad()`."""
        states = [snapshot(self.params)]
        with torch.enable_grad():
            for _ in range(steps):
                start = {name: t.detach().requires_grad_() for name, t in states[-1].items()}
                new = self.inner_steps(start, support_x, support_y, 1, first_order=True)[-1]
                states.append({name: t.detach() for name, t in new.items()})
        return states

    def predict(self, state: Params, x: Tensor) -> Tensor:
        return self.model(x, params=state)
