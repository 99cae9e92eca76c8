"""torchmeta's MAML as plugins (`tm-maml`, `tm-fomaml`): the suites' models rebuilt from torchmeta's
meta-modules (same names, weights and outputs), the shim that lets torchmeta 1.8.0 import on a current
torchvision, the native maml's and fomaml's meta-gradients, Adam steps and adapted states on the same
weights and batches, meta-gradients against finite differences, first order as the gradient at the adapted
weights, registration, the install hint, lazy import, learning sinusoids beside the native implementation,
and a grid run through the CLI."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import pytest
import torch
from torch import nn

from metaharness_plugins import hparams as shared
from metaharness_plugins.algorithms.torchmeta_maml import (
    REMOVED_TORCHVISION_HELPERS,
    TorchmetaMAML,
    import_torchmeta,
    to_meta_module,
)
from metaharness_plugins.backbones import conv4
from metaharness_plugins.backends.cpu import CPUBackend
from metaharness_plugins.suites.omniglot import OmniglotConfig, OmniglotSuite
from tests.plugins import peer_maml

if importlib.util.find_spec("torchmeta") is None:
    pytest.skip(
        "torchmeta is not installed (make setup: pip install --no-deps torchmeta==1.8.0)",
        allow_module_level=True,
    )


# --- the model, rebuilt from meta-modules ---------------------------------------------------------------


@pytest.mark.parametrize("model", ["conv4", "conv4-nopool", "mlp"])
def test_the_suites_models_become_meta_modules_with_the_same_weights_and_outputs(model: str) -> None:
    torchmeta = import_torchmeta()
    tm = torchmeta.modules
    torch.manual_seed(0)
    suite = OmniglotSuite(OmniglotConfig(ways=5, shots=1, model=model, image_size=28))
    original = suite.build_model().double()
    meta = to_meta_module(original, torchmeta)
    assert isinstance(meta, tm.MetaSequential) and len(meta) == len(original)
    known = {
        nn.Linear: tm.MetaLinear,
        nn.Conv2d: tm.MetaConv2d,
        nn.BatchNorm1d: tm.MetaBatchNorm1d,
        nn.BatchNorm2d: tm.MetaBatchNorm2d,
    }
    for ours, theirs in zip(meta, original, strict=True):
        assert type(ours) is known[type(theirs)] if type(theirs) in known else ours is theirs
    assert [name for name, _ in meta.meta_named_parameters()] == [
        name for name, _ in original.named_parameters()
    ]
    for (name, p), q in zip(meta.named_parameters(), original.parameters(), strict=True):
        assert torch.equal(p, q) and p.dtype == torch.float64 and p is not q, name
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(meta(x), original(x), rtol=0, atol=1e-12)
    doubled = {name: 2 * p for name, p in original.named_parameters()}  # forward(x, params=...) uses them
    torch.testing.assert_close(
        meta(x, params=doubled), torch.func.functional_call(original, doubled, (x,)), rtol=0, atol=1e-12
    )


def test_a_model_it_cannot_rebuild_is_a_clear_error() -> None:
    torchmeta = import_torchmeta()
    with pytest.raises(
        TypeError,
        match="know nn.Sequential, Linear, Conv2d, BatchNorm1d, BatchNorm2d and layers "
        "without parameters; got GRU",
    ):
        to_meta_module(nn.Sequential(nn.GRU(3, 4), nn.Linear(4, 2)), torchmeta)
    assert to_meta_module(conv4(1, 4, 3, 16), torchmeta)[2].__class__ is nn.ReLU


# --- the import shim -------------------------------------------------------------------------------------


def test_torchmeta_needs_the_shim_to_import_on_this_torchvision() -> None:
    """Why import_torchmeta exists (if this fails, torchvision or torchmeta changed: drop the shim)."""
    out = peer_maml.run_python("import torchmeta")
    assert out.returncode == 1
    assert "cannot import name '_get_confirm_token' from 'torchvision.datasets.utils'" in out.stderr


def test_the_shim_adds_only_missing_names_and_they_explain_themselves() -> None:
    code = (
        "import torchvision.datasets.utils as tv\n"
        "def mine(response): return 'kept'\n"
        "tv._save_response_content = mine\n"
        "from metaharness_plugins.algorithms.torchmeta_maml import import_torchmeta\n"
        "torchmeta = import_torchmeta()\n"
        "assert tv._save_response_content is mine and import_torchmeta() is torchmeta\n"
        "import torchmeta.datasets.utils as tm\n"
        "assert tm._save_response_content is mine and tm._get_confirm_token is tv._get_confirm_token\n"
        "try:\n    tm._get_confirm_token(None)\nexcept RuntimeError as exc:\n    print(exc)\n"
    )
    out = peer_maml.run_python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("torchvision.datasets.utils._get_confirm_token was removed from torchvision")
    assert "torchmeta's Google-Drive dataset downloads do not work" in out.stdout
    assert REMOVED_TORCHVISION_HELPERS == ("_get_confirm_token", "_save_response_content")


# --- the same numbers as the native implementation -------------------------------------------------------


@pytest.mark.parametrize("first_order", [False, True], ids=["maml", "fomaml"])
@pytest.mark.parametrize("suite_name", peer_maml.SUITES)
def test_meta_gradient_and_adam_steps_equal_the_native(suite_name: str, first_order: bool) -> None:
    peer_maml.check_meta_gradient_and_adam_steps(TorchmetaMAML, suite_name, first_order)


@pytest.mark.parametrize("first_order", [False, True], ids=["maml", "fomaml"])
@pytest.mark.parametrize("suite_name", ["tiny", "conv4"])
def test_meta_gradient_against_finite_differences(suite_name: str, first_order: bool) -> None:
    peer_maml.check_meta_gradient_against_finite_differences(TorchmetaMAML, suite_name, first_order)


@pytest.mark.parametrize("suite_name", ["tiny", "sinusoid"])
def test_first_order_drops_the_second_order_term(suite_name: str) -> None:
    peer_maml.check_first_order_drops_the_second_order_term(TorchmetaMAML, suite_name)


@pytest.mark.parametrize("first_order", [False, True], ids=["maml", "fomaml"])
@pytest.mark.parametrize("suite_name", peer_maml.SUITES)
def test_adapted_states_equal_the_native(suite_name: str, first_order: bool) -> None:
    peer_maml.check_adapted_states(TorchmetaMAML, suite_name, first_order)


def test_adapt_contract_on_sinusoid_regression(suite, check_adapt: Callable) -> None:
    torch.manual_seed(0)
    check_adapt(TorchmetaMAML(shared.MAMLHparams(), suite.build_model(), suite, CPUBackend()), 10)


# --- registration, install hint, import ------------------------------------------------------------------


def test_registration(registry) -> None:
    peer_maml.check_registration(
        registry, "torchmeta", "tm-", ("torchmeta", "torchvision", "h5py", "ordered_set")
    )


@pytest.mark.parametrize("module", ["torchmeta", "h5py", "ordered_set"])
def test_without_torchmeta_or_what_it_imports_the_algorithms_are_unavailable(monkeypatch, module: str) -> None:
    """The hint is set-up's, never `pip install torchmeta`, which would downgrade torch below 1.10."""
    peer_maml.check_unavailable_without(monkeypatch, module, "tm-", "pip install --no-deps torchmeta==1.8.0")


def test_import_is_lazy() -> None:
    peer_maml.check_lazy_import(
        "metaharness_plugins.algorithms.torchmeta_maml",
        ("torchmeta", "torchvision"),
        peer_maml.LAZY_BUILD.format(cls="TorchmetaMAML"),
    )


# --- learning, and a grid run ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first_order", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["maml", "fomaml"]
)
def test_learns_sinusoids_like_the_native(first_order: bool, meta_train, evaluate) -> None:
    peer_maml.check_learns_sinusoids_like_the_native(TorchmetaMAML, first_order, meta_train, evaluate)


def test_a_grid_runs_torchmeta_cells_through_the_cli(tmp_path, write_grid) -> None:
    peer_maml.check_grid_runs_through_the_cli("tm-", tmp_path, write_grid, ("sinusoid", "glyphs"))
