"""MAML and first-order MAML with torchmeta's meta-modules: Deleu, Würfl, Samiei, Cohen & Bengio (2019),
"Torchmeta: A Meta-Learning library for PyTorch" (arXiv:1909.06576), for Finn, Abbeel & Levine (2017),
"Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML.

`tm-maml` and `tm-fomaml` do their real work with torchmeta's code, as its MAML example
(examples/maml/train.py) uses it: the suite's own model is rebuilt from `torchmeta.modules` meta-modules
(`MetaSequential`, `MetaConv2d`, `MetaBatchNorm1d/2d`, `MetaLinear`, the weights copied over; parameter-
free layers such as ReLU, max-pool and Flatten are kept as they are), whose `forward(x, params=...)`
evaluates any parameter dict, and `torchmeta.utils.gradient_based.gradient_update_parameters` takes the
inner SGD steps (its `first_order` flag makes each inner gradient a constant). Meta-training loops over
the tasks of a meta-batch in Python and back-propagates each task's query loss as soon as it is
computed (`harness.functional.TaskLoopAlgorithm`), then takes one Adam step at `meta_lr`, as the example
does. The hyper-parameters are the native `maml` / `fomaml`'s (`metaharness_plugins.hparams`), less its
`vmap_tasks`.

torchmeta's last release, 1.8.0, pins torch < 1.10 and torchvision < 0.11, so set-up installs it with
`pip install --no-deps` beside its real runtime dependencies (the `torchmeta` extra of pyproject.toml).
It also imports, at import time, two Google-Drive download helpers that torchvision has since removed;
`import_torchmeta` provides them first (see there). torchmeta is imported inside the factory, so `harness
list` stays fast and a missing torchmeta (or h5py, ordered-set, torchvision, which it imports) marks
these algorithms unavailable with an install hint.
"""

from __future__ import annotations

from harness import AlgorithmSpec, forward_attributes, hookimpl
from metaharness_plugins.hparams import maml_specs

_PAPER = ("Deleu, Würfl, Samiei, Cohen & Bengio 2019, Torchmeta: A Meta-Learning library for PyTorch "
          "(arXiv:1909.06576)")


#: What torchmeta imports at import time beyond torch (its pins aside: see the module docstring).
_NEEDS = ("torchmeta", "torchvision", "h5py", "ordered_set")
#: A plain `pip install torchmeta` would downgrade torch below 1.10 (its pins): set-up installs it without.
_HINT = "make setup, which runs pip install --no-deps torchmeta==1.8.0 and the peers extra"


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    return maml_specs(
        "tm-", "metaharness_plugins.algorithms._torchmeta_maml:TorchmetaMAML",
        "torchmeta's MAML (meta-modules, gradient_update_parameters), native maml's settings",
        "torchmeta's MAML with first_order=True, native fomaml's settings",
        paper=_PAPER, requires=_NEEDS, install_hint=_HINT)


# The implementation lives in _torchmeta_maml.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.algorithms._torchmeta_maml")
