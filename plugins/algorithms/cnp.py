"""Conditional Neural Processes: Garnelo, Rosenbaum, Maddison, Ramalho, Saxton, Shanahan, Teh, Rezende
& Eslami (2018), "Conditional Neural Processes", ICML (arXiv:1807.01613).

A CNP maps a task's context (support) set straight to a predictive distribution, with no gradient
steps: an encoder MLP h embeds every pair, r_i = h(x_i, y_i); the embeddings are aggregated by their
mean, r = (1/n) sum_i r_i (permutation invariant, section 2.4); a decoder MLP g maps (r, x) at each
target point to a Gaussian's mean and standard deviation, (mu, sigma) = g(r, x). It is trained by the
negative Gaussian log-likelihood of the targets given the context (equation 4), with the context
points among the targets as in the paper's 1-D regression experiments. The standard deviation is
bounded below by softplus, sigma = min_std + (1 - min_std) softplus(.), as the authors' released 1-D
regression example does (min_std 0.1).

In the harness the support set is the context and the query set the targets; `adapt` computes r
(the state: nothing is adapted by gradient, `test_steps` is 0); `predict(state, x)` is the predictive
mean, so the suites score it by their metric (MSE), and the derivatives suite differentiates it with
respect to x (the decoder is pointwise in x). `predict_distribution(state, x)` returns (mean, std), what
the `gaussian-nll` measurement reads (the query targets' Gaussian negative log-likelihood and interval
coverage, leaderboard columns beside the MSE). Inputs and outputs may be vectors: the widths come from one
training episode of the suite. The suite's own model is not used: the CNP is its own network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness import AlgorithmSpec, check_ranges, forward_attributes, hookimpl
from metaharness_plugins.regression import check_activation, check_second_derivatives


@dataclass(frozen=True)
class CNPHparams:
    """Defaults follow the paper's 1-D regression model and the authors' released example of it.

    hidden: units per layer of encoder and decoder (128 in the paper), also the width of r.
    encoder_layers: Linear layers of the encoder h (four in the released example, the last without an
        activation: r is a linear read-out).
    decoder_layers: hidden layers of the decoder g before its output layer of 2 x y-width (two).
    activation: the MLPs' non-linearity, "relu" as in the paper; "tanh" or "softplus" give a decoder
        whose second derivative in x is not zero (the derivatives suite's order 2 needs one).
    min_std: the floor of the predicted standard deviation (0.1, as the released example).
    context_in_targets: also score the context points in the training likelihood (the paper's
        training regime: the targets are all points, the context a subset of them).
    meta_lr: Adam's step size (the released example trains with 1e-4 for 2e5 iterations; 1e-3 reaches
        a lower sinusoid MSE within harness budgets of thousands of iterations: see the tests).
    meta_batch_size: functions (tasks) per Adam step (64 in the released example).
    """

    hidden: int = 128
    encoder_layers: int = 4
    decoder_layers: int = 2
    activation: str = "relu"
    min_std: float = 0.1
    context_in_targets: bool = True
    meta_lr: float = 0.001
    meta_batch_size: int = 64

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("hidden", "encoder_layers", "meta_batch_size"),
                     non_negative=("decoder_layers",), positive=("meta_lr",))
        check_activation(self.activation)
        if not 0 <= self.min_std < 1:
            raise ValueError(f"min_std must be in [0, 1) (the floor of the predicted standard deviation), "
                             f"got {self.min_std!r}")


def check(hparams: CNPHparams, suite: str, config: Any) -> str:
    """'' unless a suite scores second derivatives (`order` 2) of a ReLU decoder, which are zero."""
    return check_second_derivatives("cnp", hparams.activation, suite, config)


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    return [
        AlgorithmSpec(
            name="cnp",
            factory="metaharness_plugins.algorithms._cnp:CNP",
            hparams=CNPHparams,
            task_kinds=frozenset({"regression"}),
            description="Conditional Neural Process: mean-aggregated MLP encoding of the support set, "
                        "decoder to a Gaussian per query point; trained by Gaussian NLL",
            paper="Garnelo et al. 2018, Conditional Neural Processes (ICML)",
            check=check,
        )
    ]


# The implementation lives in _cnp.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.algorithms._cnp")
