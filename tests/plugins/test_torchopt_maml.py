"""TorchOpt's MAML as plugins (`torchopt-maml`: MetaSGD with extract/recover_state_dict; `torchopt-fomaml`:
the functional sgd): the native maml's and fomaml's meta-gradients, Adam steps and adapted states on the
same weights and batches, meta-gradients against finite differences, first order as the gradient at the
adapted weights, the module's own parameters restored after every task, registration, the install hint,
lazy import, learning sinusoids beside the native implementation, and a grid run through the CLI."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import pytest
import torch

from metaharness_plugins import hparams as shared
from metaharness_plugins.algorithms.torchopt_maml import TorchOptMAML
from metaharness_plugins.backends.cpu import CPUBackend
from tests.plugins import peer_maml
from tests.plugins.helpers import TinySuite

if importlib.util.find_spec("torchopt") is None:
    pytest.skip("TorchOpt is not installed (make setup, or pip install torchopt)", allow_module_level=True)


@pytest.mark.parametrize("first_order", [False, True], ids=["maml", "fomaml"])
@pytest.mark.parametrize("suite_name", peer_maml.SUITES)
def test_meta_gradient_and_adam_steps_equal_the_native(suite_name: str, first_order: bool) -> None:
    peer_maml.check_meta_gradient_and_adam_steps(TorchOptMAML, suite_name, first_order)


@pytest.mark.parametrize("first_order", [False, True], ids=["maml", "fomaml"])
@pytest.mark.parametrize("suite_name", ["tiny", "conv4"])
def test_meta_gradient_against_finite_differences(suite_name: str, first_order: bool) -> None:
    peer_maml.check_meta_gradient_against_finite_differences(TorchOptMAML, suite_name, first_order)


@pytest.mark.parametrize("suite_name", ["tiny", "sinusoid"])
def test_first_order_drops_the_second_order_term(suite_name: str) -> None:
    peer_maml.check_first_order_drops_the_second_order_term(TorchOptMAML, suite_name)


def test_metasgd_leaves_the_modules_own_parameters_in_place() -> None:
    """MetaSGD replaces the module's parameters by adapted tensors; after each task (and after a task
    that raised) recover_state_dict has put the very nn.Parameter objects back, which Adam steps."""
    suite = TinySuite(None)
    algo = TorchOptMAML(
        shared.MAMLHparams(inner_lr=0.5, inner_steps=2), suite.build_model(), suite, CPUBackend()
    )
    originals = [p for _, p in algo.model.named_parameters()]
    batch = suite.sample(3, torch.Generator().manual_seed(2), "train")
    before = algo.state_dict()
    algo.meta_train_step(batch)
    now = [p for _, p in algo.model.named_parameters()]
    assert all(a is b for a, b in zip(now, originals, strict=True))
    assert all(isinstance(p, torch.nn.Parameter) and p.is_leaf for p in now)
    assert all(not torch.equal(before[name], p) for name, p in algo.model.named_parameters())  # Adam stepped
    with pytest.raises(ValueError, match="batch_size"):  # the query loss fails after the inner steps
        algo.task_loss(batch.support_x[0], batch.support_y[0], batch.query_x[0], batch.query_y[0][:2])
    assert all(a is b for a, b in zip(algo.model.parameters(), originals, strict=True))


@pytest.mark.parametrize("first_order", [False, True], ids=["maml", "fomaml"])
@pytest.mark.parametrize("suite_name", peer_maml.SUITES)
def test_adapted_states_equal_the_native(suite_name: str, first_order: bool) -> None:
    peer_maml.check_adapted_states(TorchOptMAML, suite_name, first_order)


def test_adapt_contract_on_sinusoid_regression(suite, check_adapt: Callable) -> None:
    torch.manual_seed(0)
    check_adapt(TorchOptMAML(shared.MAMLHparams(), suite.build_model(), suite, CPUBackend()), 10)


def test_registration(registry) -> None:
    peer_maml.check_registration(registry, "torchopt", "torchopt-", ("torchopt",))


def test_without_torchopt_the_algorithms_are_unavailable_with_an_install_hint(monkeypatch) -> None:
    peer_maml.check_unavailable_without(monkeypatch, "torchopt", "torchopt-", "pip install torchopt")


def test_import_is_lazy() -> None:
    peer_maml.check_lazy_import(
        "metaharness_plugins.algorithms.torchopt_maml",
        ("torchopt",),
        peer_maml.LAZY_BUILD.format(cls="TorchOptMAML"),
    )


@pytest.mark.parametrize(
    "first_order", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["maml", "fomaml"]
)
def test_learns_sinusoids_like_the_native(first_order: bool, meta_train, evaluate) -> None:
    peer_maml.check_learns_sinusoids_like_the_native(TorchOptMAML, first_order, meta_train, evaluate)


def test_a_grid_runs_torchopt_cells_through_the_cli(tmp_path, write_grid) -> None:
    peer_maml.check_grid_runs_through_the_cli("torchopt-", tmp_path, write_grid, ("sinusoid",))
