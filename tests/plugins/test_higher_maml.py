"""higher's MAML as plugins (`higher-maml`, `higher-fomaml`): the native maml's and fomaml's meta-gradients,
Adam steps and adapted states on the same weights and batches, first order as the gradient at the adapted
weights, meta-gradients against finite differences, why `copy_initial_weights=False`, registration, the
install hint, lazy import, learning sinusoids beside the native implementation, and a grid run through the
CLI."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import pytest
import torch

from metaharness_plugins import hparams as shared
from metaharness_plugins.algorithms.higher_maml import HigherMAML
from metaharness_plugins.backends.cpu import CPUBackend
from tests.plugins import peer_maml
from tests.plugins.helpers import TinySuite

if importlib.util.find_spec("higher") is None:
    pytest.skip("higher is not installed (make setup, or pip install higher)", allow_module_level=True)


@pytest.mark.parametrize("first_order", [False, True], ids=["maml", "fomaml"])
@pytest.mark.parametrize("suite_name", peer_maml.SUITES)
def test_meta_gradient_and_adam_steps_equal_the_native(suite_name: str, first_order: bool) -> None:
    peer_maml.check_meta_gradient_and_adam_steps(HigherMAML, suite_name, first_order)


@pytest.mark.parametrize("first_order", [False, True], ids=["maml", "fomaml"])
@pytest.mark.parametrize("suite_name", ["tiny", "conv4"])
def test_meta_gradient_against_finite_differences(suite_name: str, first_order: bool) -> None:
    peer_maml.check_meta_gradient_against_finite_differences(HigherMAML, suite_name, first_order)


@pytest.mark.parametrize("suite_name", ["tiny", "sinusoid"])
def test_first_order_drops_the_second_order_term(suite_name: str) -> None:
    peer_maml.check_first_order_drops_the_second_order_term(HigherMAML, suite_name)


def test_with_highers_default_copy_initial_weights_no_meta_gradient_reaches_the_model() -> None:
    """Why the plugin passes copy_initial_weights=False: with higher's default (True) the first fast
    weights are detached copies, and back-propagating the query loss leaves the model without gradient."""
    import higher

    suite = TinySuite(None)
    algo = HigherMAML(shared.MAMLHparams(inner_lr=0.5), suite.build_model(), suite, CPUBackend())
    batch = suite.sample(1, torch.Generator().manual_seed(3), "train")
    with higher.innerloop_ctx(algo.model, algo.inner_optimizer) as (fmodel, diffopt):
        diffopt.step(suite.loss(fmodel(batch.support_x[0]), batch.support_y[0]))
        suite.loss(fmodel(batch.query_x[0]), batch.query_y[0]).backward()
    assert all(p.grad is None for p in algo.model.parameters())
    _, grads = algo.meta_gradient(batch)
    assert all(float(g.abs().max()) > 1e-4 for g in grads.values())


@pytest.mark.parametrize("first_order", [False, True], ids=["maml", "fomaml"])
@pytest.mark.parametrize("suite_name", peer_maml.SUITES)
def test_adapted_states_equal_the_native(suite_name: str, first_order: bool) -> None:
    peer_maml.check_adapted_states(HigherMAML, suite_name, first_order)


def test_adapt_contract_on_sinusoid_regression(suite, check_adapt: Callable) -> None:
    torch.manual_seed(0)
    check_adapt(HigherMAML(shared.MAMLHparams(), suite.build_model(), suite, CPUBackend()), 10)


def test_registration(registry) -> None:
    peer_maml.check_registration(registry, "higher", "higher-", ("higher",))


def test_without_higher_the_algorithms_are_unavailable_with_an_install_hint(monkeypatch) -> None:
    peer_maml.check_unavailable_without(monkeypatch, "higher", "higher-", "pip install higher")


def test_import_is_lazy() -> None:
    peer_maml.check_lazy_import(
        "metaharness_plugins.algorithms.higher_maml",
        ("higher",),
        peer_maml.LAZY_BUILD.format(cls="HigherMAML"),
    )


@pytest.mark.parametrize(
    "first_order", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["maml", "fomaml"]
)
def test_learns_sinusoids_like_the_native(first_order: bool, meta_train, evaluate) -> None:
    peer_maml.check_learns_sinusoids_like_the_native(HigherMAML, first_order, meta_train, evaluate)


def test_a_grid_runs_higher_cells_through_the_cli(tmp_path, write_grid) -> None:
    peer_maml.check_grid_runs_through_the_cli("higher-", tmp_path, write_grid, ("sinusoid",))
