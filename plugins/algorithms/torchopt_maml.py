"""MAML and first-order MAML with TorchOpt's differentiable optimisers: Ren, Feng, Liu, Wen, Yang,
Mguni, Wang & Yang (2023), "TorchOpt: An Efficient Library for Differentiable Optimization", JMLR 24
(arXiv:2211.06934), for Finn, Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation
of Deep Networks", ICML.

`torchopt-maml` is TorchOpt's own MAML recipe (its README and examples/few-shot/maml_omniglot.py):
`torchopt.MetaSGD(model, lr=inner_lr)` takes differentiable inner steps on the suite's model in place,
`torchopt.extract_state_dict` keeps references to the initial weights (and the inner optimiser's
state) and `torchopt.recover_state_dict` puts them back after each task. `MetaSGD.step` always
differentiates with `create_graph=True`; it has no first-order switch. So `torchopt-fomaml`, and test-
time adaptation, use TorchOpt's functional API instead: `torchopt.sgd(lr=inner_lr)` turns gradients
taken without a graph (constants: first order) into updates, and `torchopt.apply_updates(...,
inplace=False)` adds them to the parameter dict that `torch.func.functional_call` evaluates the model
with, so the query loss still reaches the initial weights through the update itself.

Meta-training loops over the tasks of a meta-batch in Python and back-propagates each task's query loss
as soon as it is computed (`harness.functional.TaskLoopAlgorithm`), then takes one Adam step at
`meta_lr`, as TorchOpt's example does. The hyper-parameters are the native `maml` / `fomaml`'s
(`metaharness_plugins.hparams`), less its `vmap_tasks`. TorchOpt is imported inside the factory, so
`harness list` stays fast and a missing TorchOpt marks these algorithms unavailable with an install hint.
"""

from __future__ import annotations

from harness import AlgorithmSpec, forward_attributes, hookimpl
from metaharness_plugins.hparams import maml_specs

_PAPER = "Ren et al. 2023, TorchOpt: An Efficient Library for Differentiable Optimization (JMLR)"


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    return maml_specs(
        "torchopt-", "metaharness_plugins.algorithms._torchopt_maml:TorchOptMAML",
        "TorchOpt's MetaSGD MAML (extract/recover_state_dict per task), maml's settings",
        "first-order MAML with TorchOpt's functional sgd, apply_updates; fomaml's settings",
        paper=_PAPER, requires=("torchopt",))


# The implementation lives in _torchopt_maml.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.algorithms._torchopt_maml")
