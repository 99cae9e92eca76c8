"""learn2learn's algorithms as plugins: the same meta-gradients, Adam steps and adapted states as the
native maml, fomaml, metasgd and anil on the same weights and episodes, the same ProtoNet logits,
MetaOptNet's SVM head against an independent QP solution, hyper-parameters and registration, lazy and
quiet import, learning 5-way 1-shot on the real Omniglot small sets, and a grid run through the CLI."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness import Algorithm, TaskBatch, UsageError
from harness.registry import build_plugin_manager
from harness.specs import resolve_params
from metaharness_plugins import hparams as shared
from metaharness_plugins.algorithms.anil import ANIL, ANILHparams
from metaharness_plugins.algorithms.l2l import (
    L2LANIL,
    L2LMAML,
    L2LMetaSGD,
    L2LProtoNet,
    MetaOptNet,
    MetaOptNetHparams,
)
from metaharness_plugins.algorithms.maml import MAML, FOMAMLHparams, MAMLHparams
from metaharness_plugins.algorithms.metasgd import MetaSGD, MetaSGDHparams
from metaharness_plugins.algorithms.protonet import ProtoNet, ProtoNetHparams
from metaharness_plugins.backends.cpu import CPUBackend
from metaharness_plugins.suites.sinusoid import SinusoidConfig, SinusoidSuite
from tests.conftest import REPO, run_cli
from tests.plugins.helpers import DATA, TinySuite, require_omniglot

if importlib.util.find_spec("learn2learn") is None:
    pytest.skip("learn2learn is not installed (make learn2learn)", allow_module_level=True)

#: learn2learn algorithm -> (native class, native hparams, learn2learn class, learn2learn hparams).
NATIVE: dict[str, tuple[type, type, type, type]] = {
    "l2l-maml": (MAML, MAMLHparams, L2LMAML, shared.MAMLHparams),
    "l2l-fomaml": (MAML, FOMAMLHparams, L2LMAML, shared.FOMAMLHparams),
    "l2l-metasgd": (MetaSGD, MetaSGDHparams, L2LMetaSGD, shared.MetaSGDHparams),
    "l2l-anil": (ANIL, ANILHparams, L2LANIL, shared.ANILHparams),
    "l2l-protonet": (ProtoNet, ProtoNetHparams, L2LProtoNet, shared.ProtoNetHparams),
}


def _pair(name: str, suite: Any, build: Callable[[], nn.Module], **hparams: Any) -> tuple[Algorithm, ...]:
    """(native, learn2learn) algorithms from the same seed: the same weights (and Meta-SGD rates)."""
    native_cls, native_hparams, l2l_cls, l2l_hparams = NATIVE[name]
    algos = []
    for cls, params in ((native_cls, native_hparams), (l2l_cls, l2l_hparams)):
        torch.manual_seed(11)
        algos.append(cls(params(**hparams), build(), suite, CPUBackend()))
    return algos[0], algos[1]


def _sine_model() -> nn.Module:
    # tanh, so that every second-derivative term of the meta-gradient is non-zero.
    return nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 1)).double()


def _sine_batch() -> TaskBatch:
    suite = SinusoidSuite(SinusoidConfig(shots=5, query=6))
    batch = suite.sample(4, torch.Generator().manual_seed(21), "train")
    return TaskBatch(*(t.double() for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y)))


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], atol: float = 1e-12) -> None:
    assert list(got) == list(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=atol, msg=name)


# --- the same numbers as the native implementations ------------------------------------------------


@pytest.mark.parametrize(("name", "suite_name"), [
    ("l2l-maml", "tiny"), ("l2l-fomaml", "tiny"), ("l2l-metasgd", "tiny"), ("l2l-anil", "tiny"),
    ("l2l-maml", "sinusoid"), ("l2l-fomaml", "sinusoid"), ("l2l-metasgd", "sinusoid"),
])
def test_meta_gradient_and_adam_steps_equal_the_native(name: str, suite_name: str) -> None:
    """Two inner steps, float64: learn2learn's clone/adapt loop and the native functional (vmapped)
    implementation give the same meta-loss, the same meta-gradient (second order included) and, after
    three Adam steps on it, the same meta-parameters."""
    if suite_name == "tiny":
        suite: Any = TinySuite(None)
        build, batch = suite.build_model, suite.sample(3, torch.Generator().manual_seed(4), "train")
    else:
        suite, build, batch = SinusoidSuite(SinusoidConfig()), _sine_model, _sine_batch()
    rates = {} if name == "l2l-metasgd" else {"inner_lr": 0.5 if suite_name == "tiny" else 0.1}
    native, ours = _pair(name, suite, build, inner_steps=2, meta_lr=0.01, **rates)
    loss_native, grads_native = native.meta_gradient(batch)
    loss_ours, grads_ours = ours.meta_gradient(batch)
    assert loss_ours == pytest.approx(loss_native, abs=1e-12)
    _assert_same(grads_ours, grads_native)
    assert all(float(g.abs().max()) > 1e-4 for g in grads_ours.values())  # every tensor gets a gradient
    assert all(p.grad is None for p in ours.meta_parameters().values())  # meta_gradient leaves no .grad
    for _ in range(3):
        assert ours.meta_train_step(batch) == pytest.approx(native.meta_train_step(batch), abs=1e-12)
    _assert_same(ours.state_dict(), native.state_dict())


@pytest.mark.parametrize("name", ["l2l-maml", "l2l-anil"])
def test_first_order_reaches_learn2learn(name: str) -> None:
    suite = TinySuite(None)
    batch = suite.sample(3, torch.Generator().manual_seed(4), "train")
    _, second = _pair(name, suite, suite.build_model, inner_lr=0.5, inner_steps=2)
    _, first = _pair(name, suite, suite.build_model, inner_lr=0.5, inner_steps=2, first_order=True)
    (loss_2, grads_2), (loss_1, grads_1) = second.meta_gradient(batch), first.meta_gradient(batch)
    assert loss_1 == pytest.approx(loss_2, abs=1e-12)  # the same forward pass, a different gradient
    assert not torch.allclose(grads_1["0.weight"], grads_2["0.weight"], atol=1e-6)


@pytest.mark.parametrize("name", ["l2l-maml", "l2l-fomaml", "l2l-metasgd", "l2l-anil"])
def test_adapted_states_equal_the_native_and_lower_the_support_loss(name: str) -> None:
    suite = TinySuite(None)
    rates = {"alpha_init": (0.2, 0.4)} if name == "l2l-metasgd" else {"inner_lr": 0.5}
    native, ours = _pair(name, suite, suite.build_model, **rates)
    batch = suite.sample(1, torch.Generator().manual_seed(5), "test")
    sx, sy = batch.support_x[0], batch.support_y[0]
    before = ours.state_dict()
    with torch.no_grad():
        states = ours.adapt(sx, sy, 3)
        losses = [float(suite.loss(ours.predict(s, sx), sy)) for s in states]
    assert len(states) == 4
    for got, want in zip(states, native.adapt(sx, sy, 3)):
        _assert_same(got, want)
        assert all(not t.requires_grad for t in got.values())
    _assert_same(states[0], {k: v for k, v in before.items() if k in states[0]}, atol=0)
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0] - 0.05, losses
    for got, want in zip(ours.adapt(sx, sy, 3), states):  # outside no_grad: the same, still detached
        _assert_same(got, want, atol=0)
        assert all(not t.requires_grad for t in got.values())
    _assert_same(ours.state_dict(), before, atol=0)  # adapting never moves the meta-parameters


@pytest.mark.parametrize("name", ["l2l-maml", "l2l-fomaml", "l2l-metasgd"])
def test_adapt_contract_on_sinusoid_regression(
    name: str, suite: SinusoidSuite, check_adapt: Callable
) -> None:
    _, _, cls, params = NATIVE[name]
    torch.manual_seed(0)
    check_adapt(cls(params(), suite.build_model(), suite, CPUBackend()), params().test_steps)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_protonet_logits_and_training_steps_equal_the_native(distance: str) -> None:
    suite = TinySuite(None)
    native, ours = _pair("l2l-protonet", suite, suite.build_model, distance=distance, meta_lr=0.01)
    batch = suite.sample(3, torch.Generator().manual_seed(2), "train")
    # learn2learn normalises with norm + 1e-8 where F.normalize divides by max(norm, 1e-12).
    atol = 1e-12 if distance == "euclidean" else 1e-7
    for i in range(batch.num_tasks):
        sx, sy, qx = batch.support_x[i], batch.support_y[i], batch.query_x[i]
        with torch.no_grad():
            states = ours.adapt(sx, sy, 2)
            got, want = ours.predict(states[0], qx), native.predict(native.adapt(sx, sy, 0)[0], qx)
        assert len(states) == 3 and got.shape == (6, 3)
        torch.testing.assert_close(got, want, rtol=0, atol=atol)
    for _ in range(3):
        assert ours.meta_train_step(batch) == pytest.approx(native.meta_train_step(batch), abs=atol)
    _assert_same(ours.state_dict(), native.state_dict(), atol=atol)
    assert set(ours.meta_parameters()) == {"0.weight", "0.bias"}  # the classifier is dropped


def test_protonet_refuses_a_support_set_missing_a_class() -> None:
    # learn2learn numbers the prototypes by the classes present: a missing class would shift the logits.
    class MissingClass(TinySuite):
        SUPPORT_LABELS = (0, 1, 1, 0, 1, 0)

    suite = MissingClass(None)
    algo = L2LProtoNet(shared.ProtoNetHparams(), suite.build_model(), suite, CPUBackend())
    batch = suite.sample(1, torch.Generator().manual_seed(0), "train")
    message = "every class 0..2 in each support set; got labels [0, 1]"
    with pytest.raises(ValueError, match=re.escape(message)):
        algo.meta_train_step(batch)


@pytest.mark.parametrize("name", ["l2l-maml", "metaoptnet"])
def test_training_is_deterministic_given_the_seed(name: str) -> None:
    suite = _Float32Suite(None)
    batch = suite.sample(3, torch.Generator().manual_seed(8), "train")
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        algo = (L2LMAML(shared.MAMLHparams(inner_lr=0.5, meta_lr=0.01), suite.build_model(), suite, CPUBackend())
                if name == "l2l-maml" else _metaoptnet(suite, meta_lr=0.01))
        runs.append(([algo.meta_train_step(batch) for _ in range(4)], algo.state_dict()))
    assert runs[0][0] == runs[1][0]
    _assert_same(runs[0][1], runs[1][1], atol=0)


# --- MetaOptNet --------------------------------------------------------------------------------------


class _Float32Suite(TinySuite):
    """TinySuite in float32: learn2learn's SVClassifier builds its QP in float32."""

    def sample(self, n_tasks: int, generator: torch.Generator, split: str) -> TaskBatch:
        batch = super().sample(n_tasks, generator, split)
        return TaskBatch(batch.support_x.float(), batch.support_y, batch.query_x.float(), batch.query_y)

    def build_model(self) -> nn.Module:
        return super().build_model().float()


def _metaoptnet(suite: Any, model: nn.Module | None = None, **hparams: Any) -> MetaOptNet:
    return MetaOptNet(MetaOptNetHparams(**hparams), model or suite.build_model(), suite, CPUBackend())


def test_svm_head_matches_an_independent_qp_solution_and_separates_the_support() -> None:
    """The embedding is the identity (a Flatten), so the state is the SVM fitted on the given points:
    its logits equal those of the Crammer-Singer SVM dual that MetaOptNet's QP encodes (minimise
    1/2 sum_m ||sum_i a_im x_i||^2 + 1/2 ||a||^2 - sum_i a_i,y_i subject to a_im <= C [m = y_i] and
    sum_m a_im = 0; the ||a||^2 term is the identity the QP adds to the kernel), solved here by cvxpy,
    and it classifies separable points perfectly."""
    cp = pytest.importorskip("cvxpy")
    import numpy as np

    ways, shots, dim = 3, 4, 6
    algo = _metaoptnet(TinySuite(None), nn.Sequential(nn.Flatten(), nn.Linear(dim, ways)))
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(ways).repeat(shots)
    centres = 2.0 * torch.eye(ways, dim)
    support = centres[labels] + 0.3 * torch.randn(ways * shots, dim, generator=generator)
    query = centres[labels] + 0.3 * torch.randn(ways * shots, dim, generator=generator)
    with torch.no_grad():
        states = algo.adapt(support, labels, 1)
        logits = algo.predict(states[-1], query)
    assert len(states) == 2 and algo.test_steps == 0
    assert torch.equal(logits.argmax(1), labels)
    assert torch.equal(algo.predict(states[0], support).argmax(1), labels)

    x, y = support.double().numpy(), np.eye(ways)[labels.numpy()]
    alpha = cp.Variable((ways * shots, ways))
    objective = (0.5 * cp.sum_squares(x.T @ alpha) + 0.5 * cp.sum_squares(alpha)
                 - cp.sum(cp.multiply(y, alpha)))
    cp.Problem(cp.Minimize(objective), [alpha <= 0.1 * y, cp.sum(alpha, axis=1) == 0]).solve()
    reference = torch.from_numpy(query.double().numpy() @ x.T @ alpha.value)
    assert float(reference.abs().max()) > 0.5
    torch.testing.assert_close(logits.double(), reference, rtol=0, atol=1e-4)


def test_metaoptnet_trains_the_embedding_and_scale_through_the_qp() -> None:
    suite = _Float32Suite(None)
    torch.manual_seed(1)
    algo = _metaoptnet(suite, meta_lr=0.1)
    assert set(algo.meta_parameters()) == {"0.weight", "0.bias", "scale"}  # no Linear classifier
    batch = suite.sample(3, torch.Generator().manual_seed(6), "train")
    loss, grads = algo.meta_gradient(batch)
    assert all(float(g.abs().max()) > 1e-6 for g in grads.values())
    # d loss / d scale in closed form from the unscaled logits z (scale = 1): mean of (softmax - onehot).z
    expected = 0.0
    with torch.no_grad():
        for i in range(batch.num_tasks):
            z = algo.predict(algo.adapt(batch.support_x[i], batch.support_y[i], 0)[0], batch.query_x[i])
            residual = F.softmax(z, dim=1) - F.one_hot(batch.query_y[i], 3)
            expected += float((residual * z).sum(1).mean()) / batch.num_tasks
    assert float(grads["scale"]) == pytest.approx(expected, rel=1e-4)
    # The embedding's gradient is a descent direction of the loss through the QP's solution.
    with torch.no_grad():
        for name, p in algo.meta_parameters().items():
            p -= 0.05 * grads[name]
    assert algo.meta_gradient(batch)[0] < loss
    losses = [algo.meta_train_step(batch) for _ in range(30)]
    assert losses[-1] < losses[0] - 0.3  # one fixed batch: fitted (measured 1.11 -> 0.70)


def test_metaoptnet_refuses_float64_and_other_models() -> None:
    with pytest.raises(TypeError, match="metaoptnet needs a float32 model.*torch.float64"):
        _metaoptnet(TinySuite(None))
    with pytest.raises(TypeError, match="metaoptnet needs .* an nn.Sequential .*got Linear"):
        _metaoptnet(TinySuite(None), nn.Linear(4, 3))
    assert not _metaoptnet(_Float32Suite(None), learn_scale=False).meta_parameters().keys() & {"scale"}


# --- hyper-parameters, registration, import ----------------------------------------------------------


def test_hyper_parameters_and_specs_mirror_the_native_algorithms(registry: Any) -> None:
    for name, (_, native_hparams, _, l2l_hparams) in NATIVE.items():
        # vmap_tasks is the native implementation's switch; learn2learn's modules have no vmap path.
        native = {f.name: (f.type, f.default) for f in dataclasses.fields(native_hparams)
                  if f.name != "vmap_tasks"}
        assert {f.name: (f.type, f.default) for f in dataclasses.fields(l2l_hparams)} == native, name
        ours, theirs = registry.algorithm(name), registry.algorithm(name.removeprefix("l2l-"))
        assert (ours.plugin, ours.spec.requires, ours.available) == ("l2l", ("learn2learn",), True)
        assert ours.spec.hparams is l2l_hparams
        assert ours.spec.task_kinds == theirs.spec.task_kinds
        assert ours.spec.second_order == theirs.spec.second_order
    meta = registry.algorithm("metaoptnet")
    assert (meta.plugin, meta.spec.requires, meta.spec.task_kinds) == ("l2l", ("learn2learn", "qpth"),
                                                                       {"classification"})
    defaults = MetaOptNetHparams()
    assert (defaults.C_reg, defaults.max_iters, defaults.learn_scale) == (0.1, 15, True)
    assert (defaults.meta_lr, defaults.meta_batch_size) == (0.001, 8)


@pytest.mark.parametrize(("name", "overrides", "message"), [
    ("l2l-maml", {"vmap_tasks": True}, "unknown parameter of algorithm 'l2l-maml' 'vmap_tasks'"),
    ("l2l-maml", {"inner_lr": "fast"}, "parameter 'inner_lr' got 'fast', expected float"),
    ("l2l-fomaml", {"inner_steps": 0}, "inner_steps must be >= 1, got 0"),
    ("l2l-metasgd", {"alpha_init": [0.1, 0.01]}, "alpha_init must be a range (low, high) with 0 <= low"),
    ("l2l-anil", {"meta_lr": 0.0}, "meta_lr must be > 0, got 0.0"),
    ("l2l-protonet", {"distance": "manhattan"}, "distance must be one of euclidean, cosine, got 'manhattan'"),
    ("metaoptnet", {"C_reg": 0}, "C_reg must be > 0, got 0.0"),
    ("metaoptnet", {"max_iters": 0}, "max_iters must be >= 1, got 0"),
    ("metaoptnet", {"test_steps": 1}, "unknown parameter of algorithm 'metaoptnet' 'test_steps'"),
])
def test_bad_hyper_parameters_are_clear_errors(
    registry: Any, name: str, overrides: dict, message: str
) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        resolve_params(registry.algorithm(name).spec.hparams, overrides, f"algorithm {name!r}")


def test_without_learn2learn_the_algorithms_are_unavailable_with_an_install_hint(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "learn2learn", None)  # what find_spec reports for a missing package
    registry = build_plugin_manager(entry_points=False)
    for name in [*NATIVE, "metaoptnet"]:
        reg = registry.algorithm(name)
        assert not reg.available and "missing optional dependency learn2learn" in reg.reason, name
        assert "make learn2learn" in reg.reason and "pip install learn2learn" not in reg.reason
    assert registry.algorithm("maml").available


def test_import_is_lazy_and_keeps_gyms_banner_out_of_stderr() -> None:
    code = ("import sys, gym_notices.notices\n"
            "import metaharness_plugins.algorithms.l2l as plugin\n"
            "assert 'learn2learn' not in sys.modules and 'gym' not in sys.modules\n"
            "plugin.import_learn2learn()\n"
            "import gym\n"
            "assert gym_notices.notices.notices.get(gym.__version__)  # there was a banner to hide\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert (out.returncode, out.stdout, out.stderr) == (0, "ok\n", "")


# --- learning on real data, and a grid run -------------------------------------------------------------


@pytest.fixture(scope="module")
def omniglot() -> Any:
    require_omniglot()
    pytest.importorskip("PIL")
    from metaharness_plugins.suites.omniglot import OmniglotConfig, OmniglotSuite

    return OmniglotSuite(OmniglotConfig(ways=5, shots=1, query=5, data_root=str(DATA)))


#: name -> (class, hyper-parameters, meta-iterations, accuracy it must beat after test_steps). Measured
#: on one thread, seeds 0-2, accuracy after the test steps, untrained -> trained (about ms / iteration):
#: l2l-maml 0.21 -> 0.44-0.47 (250-450 ms), l2l-fomaml 0.21 -> 0.33-0.42 (210-280 ms; the native
#: fomaml's test: 0.32-0.42), l2l-metasgd 0.21 -> 0.43-0.47 (330-450 ms), l2l-anil 0.25-0.27 ->
#: 0.43-0.50 (170-230 ms; native: 0.43-0.50), l2l-protonet 0.45 -> 0.61-0.63 (47 ms; native 0.61-0.64),
#: metaoptnet 0.43-0.47 -> 0.69-0.73 (230-390 ms). Timings vary with the load of the shared machine.
_FAST = {"meta_batch_size": 4, "meta_lr": 0.003}
LEARNING: dict[str, tuple[type, Any, int, float]] = {
    "l2l-maml": (L2LMAML, shared.MAMLHparams(inner_lr=0.4, test_steps=1, **_FAST), 30, 0.3),
    "l2l-fomaml": (L2LMAML, shared.FOMAMLHparams(inner_lr=0.4, test_steps=1, **_FAST), 60, 0.3),
    # Meta-SGD's regression range for alpha (0.005-0.1) is far below MAML's Omniglot step of 0.4.
    "l2l-metasgd": (L2LMetaSGD, shared.MetaSGDHparams(alpha_init=(0.3, 0.5), **_FAST), 30, 0.3),
    "l2l-anil": (L2LANIL, shared.ANILHparams(**_FAST), 40, 0.36),
    "l2l-protonet": (L2LProtoNet, shared.ProtoNetHparams(), 60, 0.55),
    "metaoptnet": (MetaOptNet, MetaOptNetHparams(**_FAST), 30, 0.6),
}


@pytest.mark.parametrize("name", list(LEARNING))
def test_learns_omniglot_5_way_1_shot(name: str, omniglot: Any) -> None:
    """A short meta-training run (the papers' Omniglot settings where they have them, meta-batch 4 and
    meta_lr 0.003 to learn in a few iterations; ProtoNets: the paper's settings) lifts accuracy on 50
    test episodes well above chance (0.2) and above the untrained network (measured: see LEARNING)."""
    cls, hparams, iterations, threshold = LEARNING[name]
    torch.manual_seed(0)
    algo = cls(hparams, omniglot.build_model(), omniglot, CPUBackend())
    test = omniglot.sample(50, torch.Generator().manual_seed(99), "test")

    def accuracy() -> float:
        total = 0.0
        with torch.no_grad():
            for i in range(test.num_tasks):
                state = algo.adapt(test.support_x[i], test.support_y[i], algo.test_steps)[-1]
                total += float(omniglot.metric(algo.predict(state, test.query_x[i]), test.query_y[i]))
        return total / test.num_tasks

    before = accuracy()
    generator = torch.Generator().manual_seed(0)
    for _ in range(iterations):
        algo.meta_train_step(omniglot.sample(algo.meta_batch_size, generator, "train"))
    after = accuracy()
    assert after > threshold, f"{name}: accuracy {after:.3f} after {iterations} iterations (chance 0.2)"
    assert after > before + 0.1, f"{name}: accuracy {after:.3f}, untrained {before:.3f}"


def test_a_grid_runs_learn2learn_cells_through_the_cli(tmp_path, write_grid) -> None:
    grid = write_grid(
        "[[block]]\n"
        'algorithms = [{ name = "l2l-maml", inner_lr = 0.4, meta_batch_size = 2, test_steps = 1 },\n'
        '              { name = "metaoptnet", meta_batch_size = 2 }]\n'
        'suites = [{ name = "glyphs", query = 2 }]\n'
        "[budget]\niterations = 6\nval_interval = 3\nval_episodes = 2\ntest_episodes = 4\ntimeout = 300\n"
        "threads = 1\n"
    )
    out = run_cli("run", "--grid", str(grid), "--results", "results", "--leaderboards", "tables",
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Gym has been unmaintained" not in out.stderr + out.stdout
    records = [json.loads(p.read_text()) for p in (tmp_path / "results").rglob("*.json")]
    assert sorted((r["cell"]["algorithm"], r["status"]) for r in records) == [("l2l-maml", "ok"),
                                                                              ("metaoptnet", "ok")]
    assert all(0 <= r["metric"]["mean"] <= 1 for r in records)
    assert "l2l-maml" in out.stdout and "metaoptnet" in out.stdout
