"""ALPaCA, Bayesian linear regression on meta-learned features: Harrison, Sharma & Pavone (2018),
"Meta-Learning Priors for Efficient Online Bayesian Regression", Workshop on the Algorithmic Foundations
of Robotics (arXiv:1807.08912).

A feature network phi maps an input x to n features; the output is y = K^T phi(x) + noise, with the
noise eps ~ N(0, Sigma) (diagonal here) and, per task, a last layer K drawn from a matrix normal prior
MN(K0, Lambda0^-1, Sigma) (the paper's letters: K is a weight matrix here, not a shot count). Adapting
to a support set (Phi = phi(X), Y) is exact Bayesian inference, in closed form, with no gradient steps:

    Lambda_n = Phi^T Phi + Lambda0,   K_n = Lambda_n^-1 (Phi^T Y + Lambda0 K0),
    y* | x* ~ N(K_n^T phi(x*), (1 + phi(x*)^T Lambda_n^-1 phi(x*)) Sigma).

What is meta-learned is phi's weights and the prior itself: K0, Lambda0 (through a Cholesky factor with
a positive diagonal, so it stays positive definite) and Sigma, by minimising the Gaussian negative
log-likelihood of the query targets under that posterior predictive (the paper's training objective),
the batch's tasks in one batched pass. The harness's support sets have the suite's fixed size K (the
paper also varies the number of context points during training).

As a learner of function values it is the Bayes posterior mean under a learned prior: on function
families that are (nearly) linear in some basis (polynomials, sums of sinusoids at a few frequencies) it
learns the basis, and with it how the few support values determine the rest of the function. The
derivatives suite differentiates the posterior mean K_n^T phi(x) with respect to x; the default smooth
non-linearity (tanh) gives phi non-zero second derivatives. `predict_distribution` returns the
predictive (mean, std), read by the `gaussian-nll` measurement. Inputs and outputs may be vectors (the
widths come from one training episode of the suite); the suite's own model is not used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness import AlgorithmSpec, check_ranges, forward_attributes, hookimpl
from metaharness_plugins.regression import check_activation, check_second_derivatives


@dataclass(frozen=True)
class ALPaCAHparams:
    """The paper fixes the model, not these sizes; the defaults are chosen here, the feature network
    being a little wider than the 1-40-40-1 regressor the other learners adapt.

    hidden: units per hidden layer of the feature network.
    layers: hidden layers of the feature network (each followed by `activation`).
    features: n, the number of features phi(x) (the last layer, linear; the prior is over its weights).
    activation: "tanh" (smooth: derivatives of the posterior mean in x mean something), "softplus" or
        "relu".
    meta_lr: Adam's step size.
    meta_batch_size: tasks per Adam step.
    """

    hidden: int = 128
    layers: int = 2
    features: int = 32
    activation: str = "tanh"
    meta_lr: float = 0.001
    meta_batch_size: int = 25

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("hidden", "features", "meta_batch_size"), non_negative=("layers",),
                     positive=("meta_lr",))
        check_activation(self.activation)


def check(hparams: ALPaCAHparams, suite: str, config: Any) -> str:
    """'' unless a suite scores second derivatives (`order` 2) of ReLU features, which are zero."""
    return check_second_derivatives("alpaca", hparams.activation, suite, config)


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    return [
        AlgorithmSpec(
            name="alpaca",
            factory="metaharness_plugins.algorithms._alpaca:ALPaCA",
            hparams=ALPaCAHparams,
            task_kinds=frozenset({"regression"}),
            description="ALPaCA: exact Bayesian linear regression on meta-learned features, with a "
                        "meta-learned prior over the last layer; adapts in closed form; trained by the "
                        "query NLL",
            paper="Harrison, Sharma & Pavone 2018, Meta-Learning Priors for Efficient Online Bayesian "
                  "Regression (WAFR)",
            check=check,
        )
    ]


# The implementation lives in _alpaca.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.algorithms._alpaca")
