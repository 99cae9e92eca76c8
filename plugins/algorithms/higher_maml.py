"""MAML and first-order MAML with higher's differentiable inner loops: Grefenstette, Amos, Yarats, Htut,
Molchanov, Meier, Kiela, Cho & Chintala (2019), "Generalized Inner Loop Meta-Learning" (arXiv:1910.01727),
for Finn, Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML.

`higher-maml` and `higher-fomaml` do their real work with `higher.innerloop_ctx`: the suite's model is
monkey-patched into a stateless module with fast weights, and `torch.optim.SGD` at `inner_lr` becomes a
differentiable optimiser whose `step(loss)` is MAML's inner update. Meta-training is written as higher's
MAML example writes it: a Python loop over the tasks of a meta-batch, each task's query loss
back-propagated as soon as it is computed (`harness.functional.TaskLoopAlgorithm`), then one Adam step
at `meta_lr`.

Which of higher's switches give which algorithm (tests/plugins/test_higher_maml.py checks all three):

- MAML: `copy_initial_weights=False`, so the model's own weights are the first fast weights and the
  meta-gradient reaches them; with higher's default, `True`, they are detached copies and no gradient
  reaches the model at all. `track_higher_grads=True` keeps every inner step differentiable.
- first-order MAML: `track_higher_grads=False`, so each inner gradient is a constant and every new fast
  weight is a fresh leaf; no second-order graph is built. The query loss then reaches only the last fast
  weights, and, as higher's maintainers prescribe (facebookresearch/higher#63), its gradient with
  respect to them is the first-order meta-gradient, mapped by hand onto the initial weights.
- test-time adaptation: `copy_initial_weights=True, track_higher_grads=False`, higher's "test mode".

The hyper-parameters are the native `maml` / `fomaml`'s (`metaharness_plugins.hparams`), less its
`vmap_tasks`. higher is imported inside the factory, so `harness list` stays fast and a missing higher
marks these algorithms unavailable with an install hint.
"""

from __future__ import annotations

from harness import AlgorithmSpec, forward_attributes, hookimpl
from metaharness_plugins.hparams import maml_specs

_PAPER = "Grefenstette et al. 2019, Generalized Inner Loop Meta-Learning (arXiv:1910.01727)"


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    return maml_specs(
        "higher-", "metaharness_plugins.algorithms._higher_maml:HigherMAML",
        "higher's innerloop_ctx MAML (differentiable SGD, second order), maml's settings",
        "higher's innerloop_ctx, track_higher_grads=False (first order), fomaml's settings",
        paper=_PAPER, requires=("higher",))


# The implementation lives in _higher_maml.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.algorithms._higher_maml")
