"""Checks shared by the tests of the peer libraries' MAML plugins (higher, TorchOpt, torchmeta): each peer
against the native `maml` / `fomaml` on the same weights and batches in float64, first order against the
gradient at the adapted weights, adapted states, registration, the install hint when the library is
missing, lazy import, and learning sinusoids beside the native implementation."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.func import functional_call

from harness import Algorithm, TaskBatch
from harness.registry import build_plugin_manager
from metaharness_plugins import hparams as shared
from metaharness_plugins.algorithms.maml import MAML, FOMAMLHparams, MAMLHparams
from metaharness_plugins.backbones import conv4
from metaharness_plugins.backends.cpu import CPUBackend
from metaharness_plugins.suites.sinusoid import SinusoidConfig, SinusoidSuite
from tests.conftest import REPO, run_cli
from tests.plugins.helpers import TinySuite

SUITES = ("tiny", "conv4", "sinusoid")
#: Whether the native implementation is compared with its tasks vmapped (its default) or looped. On conv4
#: its vmapped second-order meta-gradient is not the meta-loss's gradient (torch 2.14.1: batch norm's
#: double backward under torch.func.vmap; measured 1e-2 off the looped one, while the looped one, every
#: peer, and a central finite difference agree, see check_meta_gradient_against_finite_differences), so
#: the peers are compared with the native loop there.
NATIVE_VMAP = {"tiny": True, "conv4": False, "sinusoid": True}


class TinyImageSuite(TinySuite):
    """TinySuite's labels and loss on 1 x 16 x 16 images, with the suites' conv4 (batch norm on batch
    statistics, max-pools, Flatten, Linear) at 4 filters: the image models' layers, small enough for
    float64."""

    def sample(self, n_tasks: int, generator: torch.Generator, split: str) -> TaskBatch:
        labels = super().sample(n_tasks, generator, split)
        sx, qx = (
            torch.randn(n_tasks, y.shape[1], 1, 16, 16, generator=generator, dtype=torch.float64)
            for y in (labels.support_y, labels.query_y)
        )
        return TaskBatch(sx, labels.support_y, qx, labels.query_y)

    def build_model(self) -> nn.Module:
        return conv4(1, 4, 3, 16).double()


def sine_model() -> nn.Module:
    # tanh, so that every second-derivative term of the meta-gradient is non-zero.
    return nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 1)).double()


def setting(suite_name: str, tasks: int = 3) -> tuple[Any, Callable[[], nn.Module], TaskBatch, float]:
    """(suite, model builder, float64 batch, inner_lr) of one of SUITES."""
    if suite_name == "sinusoid":
        suite: Any = SinusoidSuite(SinusoidConfig(shots=5, query=6))
        batch = suite.sample(tasks, torch.Generator().manual_seed(21), "train")
        batch = TaskBatch(
            *(t.double() for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y))
        )
        return suite, sine_model, batch, 0.1
    suite = TinySuite(None) if suite_name == "tiny" else TinyImageSuite(None)
    return suite, suite.build_model, suite.sample(tasks, torch.Generator().manual_seed(4), "train"), 0.5


def pair(
    peer: type,
    suite: Any,
    build: Callable[[], nn.Module],
    first_order: bool,
    native_vmap: bool = True,
    **hparams: Any,
) -> tuple[Algorithm, Algorithm]:
    """(native, peer) from the same seed: the same initial weights."""
    native_hparams = (FOMAMLHparams if first_order else MAMLHparams)(vmap_tasks=native_vmap, **hparams)
    peer_hparams = (shared.FOMAMLHparams if first_order else shared.MAMLHparams)(**hparams)
    algos = []
    for cls, params in ((MAML, native_hparams), (peer, peer_hparams)):
        torch.manual_seed(11)
        algos.append(cls(params, build(), suite, CPUBackend()))
    return algos[0], algos[1]


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], atol: float = 1e-12) -> None:
    assert list(got) == list(want)
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=atol, msg=name)


# --- the same numbers as the native implementation ---------------------------------------------------


def check_meta_gradient_and_adam_steps(peer: type, suite_name: str, first_order: bool) -> None:
    """Two inner steps, float64: the peer's task loop and the native functional (vmapped) MAML give the
    same meta-loss, the same meta-gradient and, after three Adam steps on it, the same weights."""
    suite, build, batch, inner_lr = setting(suite_name)
    native, ours = pair(
        peer,
        suite,
        build,
        first_order,
        NATIVE_VMAP[suite_name],
        inner_lr=inner_lr,
        inner_steps=2,
        meta_lr=0.01,
    )
    loss_native, grads_native = native.meta_gradient(batch)
    loss_ours, grads_ours = ours.meta_gradient(batch)
    assert loss_ours == pytest.approx(loss_native, abs=1e-12)
    assert_same(grads_ours, grads_native)
    # A tensor whose exact gradient is zero (conv4's conv biases, which batch norm cancels) gets rounding
    # noise; every other tensor gets a real gradient.
    noise = {name for name, g in grads_native.items() if float(g.abs().max()) < 1e-12}
    assert noise == ({f"{i}.bias" for i in (0, 4, 8, 12)} if suite_name == "conv4" else set())
    assert all(float(g.abs().max()) > 1e-4 for name, g in grads_ours.items() if name not in noise)
    assert all(p.grad is None for p in ours.meta_parameters().values())  # meta_gradient leaves no .grad
    for _ in range(3):
        assert ours.meta_train_step(batch) == pytest.approx(native.meta_train_step(batch), abs=1e-12)
    # Adam turns the noise into full steps of either sign: those tensors are only bounded by 3 steps.
    ours_after, native_after = ours.state_dict(), native.state_dict()
    assert_same(
        {k: v for k, v in ours_after.items() if k not in noise},
        {k: v for k, v in native_after.items() if k not in noise},
    )
    for name in noise:
        assert float((ours_after[name] - native_after[name]).abs().max()) <= 6 * 0.01 + 1e-9, name


def check_meta_gradient_against_finite_differences(peer: type, suite_name: str, first_order: bool) -> None:
    """The peer's meta-gradient, in three random directions v, against the central difference
    (L(theta + h v) - L(theta - h v)) / 2h of its own meta-loss (second order: the exact meta-gradient;
    first order: it differs, by the dropped term). Independent of the native implementation."""
    suite, build, batch, inner_lr = setting(suite_name)
    _, ours = pair(peer, suite, build, first_order, inner_lr=inner_lr, inner_steps=2)
    _, grads = ours.meta_gradient(batch)
    params = ours.meta_parameters()
    generator = torch.Generator().manual_seed(0)
    # ReLU and max-pool make the meta-loss piecewise smooth, with kinks dense enough at inner_lr 0.5 that
    # steps of 1e-5 already cross some (measured); 1e-6 stays within one piece in float64.
    h, gaps = 1e-6, []
    for _ in range(3):
        v = {name: torch.randn(p.shape, generator=generator, dtype=p.dtype) for name, p in params.items()}
        sides = []
        for sign in (1, -1):
            with torch.no_grad():
                for name, p in params.items():
                    p += sign * h * v[name]
            sides.append(ours.meta_gradient(batch)[0])
            with torch.no_grad():
                for name, p in params.items():
                    p -= sign * h * v[name]
        difference = (sides[0] - sides[1]) / (2 * h)
        analytic = sum(float((grads[name] * v[name]).sum()) for name in grads)
        gaps.append(abs(analytic - difference) / abs(difference))
    if first_order:
        assert max(gaps) > 1e-4, gaps
    else:
        assert max(gaps) < 1e-6, gaps


def check_first_order_drops_the_second_order_term(peer: type, suite_name: str) -> None:
    """First order: the meta-gradient is the mean over tasks of the query loss's gradient at the adapted
    weights (computed here apart, from the native adaptation), the second-order one is not; the
    forward pass, hence the meta-loss, is the same."""
    suite, build, batch, inner_lr = setting(suite_name)
    _, second = pair(peer, suite, build, False, inner_lr=inner_lr, inner_steps=2)
    native, first = pair(peer, suite, build, True, inner_lr=inner_lr, inner_steps=2)
    (loss_2, grads_2), (loss_1, grads_1) = second.meta_gradient(batch), first.meta_gradient(batch)
    assert loss_1 == pytest.approx(loss_2, abs=1e-12)
    reference = {name: torch.zeros_like(p) for name, p in native.params.items()}
    for i in range(batch.num_tasks):
        adapted = {
            name: t.requires_grad_()
            for name, t in native.adapt(batch.support_x[i], batch.support_y[i], 2)[-1].items()
        }
        loss = suite.loss(functional_call(native.model, adapted, (batch.query_x[i],)), batch.query_y[i])
        for name, g in zip(adapted, torch.autograd.grad(loss, list(adapted.values()))):
            reference[name] += g / batch.num_tasks
    assert_same(grads_1, reference)
    difference = max(float((grads_2[k] - grads_1[k]).abs().max()) for k in grads_1)
    assert difference > 1e-3, difference  # the second-order term is there, and measurable


def check_adapted_states(peer: type, suite_name: str, first_order: bool) -> None:
    """Test-time adaptation: the native states, detached, the first one the meta-parameters, lowering
    the support loss; the same under no_grad and without it; the meta-parameters untouched."""
    suite, build, _, inner_lr = setting(suite_name)
    native, ours = pair(peer, suite, build, first_order, inner_lr=inner_lr)
    batch = suite.sample(1, torch.Generator().manual_seed(5), "test")
    sx, sy = batch.support_x[0].double(), batch.support_y[0]
    sy = sy.double() if sy.is_floating_point() else sy  # sinusoid targets; class labels stay integers
    before = ours.state_dict()
    with torch.no_grad():
        states = ours.adapt(sx, sy, 3)
        losses = [float(suite.loss(ours.predict(s, sx), sy)) for s in states]
    assert len(states) == 4
    for got, want in zip(states, native.adapt(sx, sy, 3), strict=True):
        assert_same(got, want)
        assert all(not t.requires_grad for t in got.values())
    assert_same(states[0], before, atol=0)
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0] - 0.01, losses
    for got, want in zip(ours.adapt(sx, sy, 3), states, strict=True):  # outside no_grad: the same
        assert_same(got, want, atol=0)
        assert all(not t.requires_grad for t in got.values())
    assert_same(ours.state_dict(), before, atol=0)  # adapting never moves the meta-parameters
    with torch.no_grad():
        for state in states:  # predict evaluates a state as the native model does
            torch.testing.assert_close(ours.predict(state, sx), native.predict(state, sx), rtol=0, atol=1e-12)


# --- registration, install hint, import ---------------------------------------------------------------


def check_registration(registry: Any, plugin: str, prefix: str, requires: tuple[str, ...]) -> None:
    """`<prefix>maml` and `<prefix>fomaml`: the shared hyper-parameters (the native ones less
    vmap_tasks), the native specs' task kinds and second-order flags, the declared requirements."""
    for name, hparams in ((f"{prefix}maml", shared.MAMLHparams), (f"{prefix}fomaml", shared.FOMAMLHparams)):
        ours, theirs = registry.algorithm(name), registry.algorithm(name.removeprefix(prefix))
        assert (ours.plugin, ours.spec.requires, ours.available) == (plugin, requires, True), name
        assert ours.spec.hparams is hparams
        native = {
            f.name: (f.type, f.default)
            for f in dataclasses.fields(theirs.spec.hparams)
            if f.name != "vmap_tasks"
        }
        assert {f.name: (f.type, f.default) for f in dataclasses.fields(hparams)} == native
        assert ours.spec.task_kinds == theirs.spec.task_kinds
        assert ours.spec.second_order == theirs.spec.second_order
        assert ours.spec.paper and "Finn" in ours.spec.paper


def check_unavailable_without(
    monkeypatch: pytest.MonkeyPatch, module: str, prefix: str, hint: str
) -> None:
    """With `module` missing (what find_spec reports for an uninstalled package), both algorithms are
    listed unavailable with the install hint `hint`; the native ones are unaffected."""
    monkeypatch.setitem(sys.modules, module, None)
    registry = build_plugin_manager(entry_points=False)
    for name in (f"{prefix}maml", f"{prefix}fomaml"):
        reg = registry.algorithm(name)
        assert not reg.available, name
        assert (
            f"missing optional dependency {module}" in reg.reason and hint in reg.reason
        )
    assert registry.algorithm("maml").available and registry.algorithm("fomaml").available


def check_lazy_import(plugin_module: str, libraries: tuple[str, ...], build: str) -> None:
    """Importing the plugin module (what `harness list` does) imports none of `libraries`; building an
    algorithm (`build`, Python run after the import, the module bound as `plugin`) imports them."""
    code = (
        f"import sys\nimport {plugin_module} as plugin\n"
        f"assert not [m for m in {libraries!r} if m in sys.modules], sorted(sys.modules)\n"
        f"{build}\n"
        f"assert all(m in sys.modules for m in {libraries!r})\nprint('ok')\n"
    )
    out = run_python(code)
    assert (out.returncode, out.stdout, out.stderr) == (0, "ok\n", "")


LAZY_BUILD = (
    "from metaharness_plugins.hparams import MAMLHparams\n"
    "from metaharness_plugins.backends.cpu import CPUBackend\n"
    "from metaharness_plugins.suites.sinusoid import SinusoidConfig, SinusoidSuite\n"
    "suite = SinusoidSuite(SinusoidConfig())\n"
    "plugin.{cls}(MAMLHparams(), suite.build_model(), suite, CPUBackend())"
)


# --- learning, beside the native implementation -------------------------------------------------------

ITERATIONS = 150


def check_learns_sinusoids_like_the_native(
    peer: type,
    first_order: bool,
    meta_train: Callable[..., list[float]],
    evaluate: Callable[..., torch.Tensor],
) -> None:
    """float32, the suite's model and the papers' settings but meta_lr 0.003 (to learn within ITERATIONS):
    the peer and the native implementation start from the same weights, see the same batches and end
    with test MSE curves (200 tasks, 0..10 steps) that agree closely, well below the untrained curve."""
    suite = SinusoidSuite(SinusoidConfig())
    native, ours = pair(peer, suite, suite.build_model, first_order, meta_lr=0.003)
    untrained = evaluate(ours, 10)
    native_losses, our_losses = meta_train(native, ITERATIONS), meta_train(ours, ITERATIONS)
    assert our_losses[:3] == pytest.approx(native_losses[:3], rel=1e-4)  # float32 rounding apart, one path
    native_curve, curve = evaluate(native, 10), evaluate(ours, 10)
    torch.testing.assert_close(curve, native_curve, rtol=1e-3, atol=1e-4)  # measured: 1e-8 apart
    assert curve[10] < 0.6 * untrained[10], (curve, untrained)


def check_grid_runs_through_the_cli(prefix: str, tmp_path: Any, write_grid: Callable, suites: tuple[str, ...]) -> None:
    """`<prefix>maml` and `<prefix>fomaml` run as grid cells through the `harness` command, every cell ok."""
    chosen = {"sinusoid": '{ name = "sinusoid", query = 5 }', "glyphs": '{ name = "glyphs", query = 2 }'}
    grid = write_grid(
        "[[block]]\n"
        f'algorithms = [{{ name = "{prefix}maml", meta_batch_size = 2, test_steps = 2 }}, "{prefix}fomaml"]\n'
        f"suites = [{', '.join(chosen[name] for name in suites)}]\n"
        "[budget]\niterations = 4\nval_interval = 2\nval_episodes = 2\ntest_episodes = 4\ntimeout = 300\n"
        "threads = 1\n"
    )
    out = run_cli("run", "--grid", str(grid), "--results", "results", "--leaderboards", "tables", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    records = [json.loads(p.read_text()) for p in (tmp_path / "results").rglob("*.json")]
    assert sorted((r["cell"]["algorithm"], r["cell"]["suite"], r["status"]) for r in records) == sorted(
        (f"{prefix}{name}", suite, "ok") for name in ("maml", "fomaml") for suite in suites)
    assert all(r["metric"]["mean"] > 0 for r in records)


def run_python(code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter at the repository root, warnings as errors (as pytest runs)."""
    return subprocess.run([sys.executable, "-W", "error", "-c", code], check=False, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
