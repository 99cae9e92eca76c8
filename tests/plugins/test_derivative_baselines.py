"""The classical derivative baselines: exactness on the polynomials each is exact for, convergence on sin(x),
noise, the support-size rules (grid check and runtime), scratch-net's determinism, and real cells."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from harness import Predictor
from harness.cells import run_one
from harness.errors import GridError
from harness.grid import load_grid
from harness.registry import build_plugin_manager
from harness.specs import Budget, Cell
from metaharness_plugins.algorithms import derivative_baselines as db
from metaharness_plugins.algorithms._derivative_baselines import (
    CentralDifferences,
    ForwardDifferences,
    LocalPolynomial,
    ScratchNet,
    SmoothingSpline,
)
from metaharness_plugins.backends.cpu import CPUBackend
from metaharness_plugins.suites.sinusoid import SinusoidConfig, SinusoidSuite

REGISTRY = build_plugin_manager(entry_points=False)
BACKEND = CPUBackend()
SUITE = SinusoidSuite(SinusoidConfig())
NAMES = ("fd-central", "fd-forward", "spline", "local-poly", "scratch-net")
CLASSES = {"fd-central": CentralDifferences, "fd-forward": ForwardDifferences, "spline": SmoothingSpline,
           "local-poly": LocalPolynomial, "scratch-net": ScratchNet}


def build(name: str, suite: Any = SUITE, **hparams: Any) -> Any:
    spec = REGISTRY.algorithms[name].spec
    return CLASSES[name](spec.hparams(**hparams), suite.build_model(), suite, BACKEND)


def points(k: int, seed: int = 0, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    """k random (non-uniformly spaced) inputs in [low, high] as float64 [k, 1], the interval's ends among them
    (so query points inside [low, high] are inside the support)."""
    generator = torch.Generator().manual_seed(seed)
    x = low + (high - low) * torch.rand(k - 2, 1, generator=generator, dtype=torch.float64)
    return torch.cat([torch.tensor([[low], [high]], dtype=torch.float64), x])


def derivatives(algo: Any, x: torch.Tensor, y: torch.Tensor, q: torch.Tensor, order: int
                ) -> list[torch.Tensor]:
    (state,) = algo.adapt(x, y, 0)
    return Predictor(algo, state).derivatives(q, order)


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)


# --- exactness ---------------------------------------------------------------------------------------


def test_central_differences_are_exact_for_a_quadratic_at_and_between_the_support_points() -> None:
    x = points(9)
    y = 3 * x**2 - 2 * x + 0.5
    q = torch.cat([x, torch.linspace(-1, 1, 37, dtype=torch.float64).reshape(-1, 1)])
    first, second = derivatives(build("fd-central"), x, y, q, 2)
    # f' = 6x - 2 is linear, so its linear interpolation between exact point values is exact too; f'' = 6.
    close(first, 6 * q - 2, 1e-10)
    close(second, torch.full_like(q, 6.0), 1e-9)
    assert first.shape == q.shape and first.dtype == q.dtype


def test_central_differences_match_the_parabola_through_each_three_points() -> None:
    """On exp(x) (no stencil is exact) each estimate is the derivative of the interpolating parabola of the
    point and its neighbours (numpy.polyfit through three points), the one-sided parabola at the ends."""
    x = points(7, seed=3)
    y = torch.exp(x)
    xs, ys = np.sort(x.numpy().ravel()), np.exp(np.sort(x.numpy().ravel()))
    algo = build("fd-central")
    q = torch.from_numpy(xs).reshape(-1, 1)
    first, second = derivatives(algo, x, y, q, 2)
    for i in range(len(xs)):
        lo = min(max(i - 1, 0), len(xs) - 3)
        parabola = np.polyfit(xs[lo:lo + 3], ys[lo:lo + 3], 2)
        assert float(first[i]) == pytest.approx(np.polyval(np.polyder(parabola), xs[i]), abs=1e-9)
        assert float(second[i]) == pytest.approx(2 * parabola[0], abs=1e-8)


def test_forward_differences_are_exact_for_lines_and_their_second_difference_for_parabolas() -> None:
    x = points(8, seed=1)
    (first,) = derivatives(build("fd-forward"), x, 4 * x - 1, x, 1)
    close(first, torch.full_like(x, 4.0), 1e-10)
    _, second = derivatives(build("fd-forward"), x, 3 * x**2 + x, x, 2)
    close(second, torch.full_like(x, 6.0), 1e-9)
    # On a parabola the forward slope at x_i is f'(midpoint of x_i, x_{i+1}) = 6 m + 1 (the mean value
    # theorem is exact for quadratics); the last point takes the backward slope, the same as its neighbour's.
    xs = torch.sort(x.ravel()).values
    (forward,) = derivatives(build("fd-forward"), x, 3 * x**2 + x, xs.reshape(-1, 1), 1)
    mids = (xs[1:] + xs[:-1]) / 2
    close(forward.ravel(), torch.cat([6 * mids + 1, 6 * mids[-1:] + 1]), 1e-10)


def test_local_polynomial_of_degree_three_is_exact_for_a_cubic() -> None:
    x = points(12, seed=2)
    y = x**3 - 2 * x**2 + 0.5 * x - 1
    q = torch.linspace(-1, 1, 41, dtype=torch.float64).reshape(-1, 1)
    algo = build("local-poly", degree=3)
    first, second = derivatives(algo, x, y, q, 2)
    close(first, 3 * q**2 - 4 * q + 0.5, 1e-8)
    close(second, 6 * q - 4, 1e-7)
    (state,) = algo.adapt(x, y, 0)
    close(algo.predict(state, q), q**3 - 2 * q**2 + 0.5 * q - 1, 1e-9)


def test_local_polynomial_is_the_least_squares_fit_over_the_nearest_window() -> None:
    """On exp(x) a window of 6 points and degree 2: the derivative at q is that of numpy.polyfit's
    least-squares parabola through the 6 support points nearest to q."""
    x = points(15, seed=4)
    y = torch.exp(x)
    xs, ys = x.numpy().ravel(), np.exp(x.numpy().ravel())
    q = np.array([-0.83, -0.1, 0.37, 0.9])
    first, second = derivatives(build("local-poly", degree=2, window=6), x, y,
                                torch.from_numpy(q).reshape(-1, 1), 2)
    for j, qj in enumerate(q):
        near = np.argsort(np.abs(xs - qj))[:6]
        parabola = np.polyfit(xs[near], ys[near], 2)
        assert float(first[j]) == pytest.approx(np.polyval(np.polyder(parabola), qj), abs=1e-9)
        assert float(second[j]) == pytest.approx(2 * parabola[0], abs=1e-8)


def test_spline_is_nearly_exact_on_smooth_data_with_many_points() -> None:
    x = points(200, seed=5, low=-3.0, high=3.0)
    q = torch.linspace(-2.5, 2.5, 101, dtype=torch.float64).reshape(-1, 1)
    first, second = derivatives(build("spline"), x, torch.sin(x), q, 2)
    # Measured: max errors 6e-5 (f') and 1.5e-3 (f'') with the GCV penalty.
    close(first, torch.cos(q), 5e-4)
    close(second, -torch.sin(q), 2e-2)
    # The third derivative (piecewise constant for a cubic spline) is answered too, roughly (measured 0.06).
    third = derivatives(build("spline", smoothing=0.0), x, torch.sin(x), q, 3)[2]
    close(third, -torch.cos(q), 0.2)


# --- convergence and noise ---------------------------------------------------------------------------


def median_error(name: str, k: int, noise: float = 0.0, order: int = 1, episodes: int = 20,
                 **hparams: Any) -> float:
    """Median over episodes of the MSE of the order-`order` derivative of sin on [-5, 5] (query points
    in [-4, 4])."""
    algo = build(name, **hparams)
    generator = torch.Generator().manual_seed(7)
    q = torch.linspace(-4, 4, 101, dtype=torch.float64).reshape(-1, 1)
    truth = [torch.cos(q), -torch.sin(q)][order - 1]
    errors = []
    for _ in range(episodes):
        x = 10 * torch.rand(k, 1, generator=generator, dtype=torch.float64) - 5
        y = torch.sin(x) + noise * torch.randn(k, 1, generator=generator, dtype=torch.float64)
        errors.append(float(((derivatives(algo, x, y, q, order)[order - 1] - truth) ** 2).mean()))
    return float(np.median(errors))


@pytest.mark.parametrize(("name", "hparams", "factor"), [
    # Eight times the points: a first-order method's MSE falls about 8^2 = 64-fold, the others' far more.
    ("fd-central", {}, 0.01), ("fd-forward", {}, 0.05), ("spline", {}, 0.01),
    ("local-poly", {"degree": 3}, 0.01),
])
def test_errors_shrink_as_k_grows_on_a_sine(name: str, hparams: dict[str, Any], factor: float) -> None:
    errors = [median_error(name, k, **hparams) for k in (10, 20, 40, 80)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < factor * errors[0]


def test_central_differences_converge_faster_than_forward_ones() -> None:
    """On uniform grids the derivative error falls as h^2 for central and as h for forward differences
    (so the MSE falls 16x and 4x per halving of h)."""
    def error(name: str, k: int) -> float:
        x = torch.linspace(0, 2, k, dtype=torch.float64).reshape(-1, 1)
        (first,) = derivatives(build(name), x, torch.sin(x), x[1:-1], 1)
        return float(((first - torch.cos(x[1:-1])) ** 2).mean())

    central = error("fd-central", 21) / error("fd-central", 41)
    forward = error("fd-forward", 21) / error("fd-forward", 41)
    assert 12 < central < 20 and 3 < forward < 5, (central, forward)


def test_noise_is_amplified_by_differences_and_smoothed_by_the_spline_and_wide_windows() -> None:
    # Measured with noise 0.1 and K = 80: fd-central 119 (1.3 at K = 20), spline (GCV) 0.004, local-poly
    # degree 3 with its default window of 5: 39, with 15: 0.016. Without noise fd-central gives 1e-4 at
    # K = 80: differences divide the noise by the spacing, so more points make it worse.
    central = median_error("fd-central", 80, noise=0.1)
    assert central > 10 * median_error("fd-central", 20, noise=0.1) > 0
    assert median_error("spline", 80, noise=0.1) < 0.02 < central
    assert median_error("local-poly", 80, noise=0.1, degree=3, window=15) < 0.05 < \
        median_error("local-poly", 80, noise=0.1, degree=3)
    # With noise the penalty GCV chooses beats interpolation (smoothing=0) by far (measured 0.007 vs 17).
    assert median_error("spline", 40, noise=0.1) * 100 < median_error("spline", 40, noise=0.1, smoothing=0.0)


# --- the contract ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_adapt_returns_one_fit_per_step_and_predicts_on_the_inputs_dtype(name: str) -> None:
    algo = build(name, **({"fit_steps": 20} if name == "scratch-net" else {}))
    x = points(8).float()
    states = algo.adapt(x, torch.sin(x), 3)
    assert len(states) == 4 and all(s is states[0] for s in states)
    assert algo.meta_parameters() == {} and algo.num_parameters() == 0 and algo.state_dict() == {}
    assert algo.meta_train_step(SUITE.sample(2, torch.Generator().manual_seed(0), "train")) == 0.0
    assert algo.test_steps == 0
    q = torch.linspace(-1, 1, 5).reshape(-1, 1)
    value = algo.predict(states[0], q)
    first, second = Predictor(algo, states[0]).derivatives(q, 2)
    assert value.shape == first.shape == second.shape == (5, 1)
    assert value.dtype == first.dtype == torch.float32


@pytest.mark.parametrize("name", ["fd-central", "fd-forward", "spline", "local-poly"])
def test_the_fitted_function_goes_through_exact_points(name: str) -> None:
    """Interpolating methods reproduce the support values (the spline with penalty 0, local-poly with
    window = degree + 1)."""
    extra = {"spline": {"smoothing": 0.0}, "local-poly": {"degree": 2, "window": 3}}.get(name, {})
    algo = build(name, **extra)
    x = points(9, seed=6)
    (state,) = algo.adapt(x, torch.exp(x), 0)
    close(algo.predict(state, x), torch.exp(x), 1e-9)


def test_outside_the_support_derivatives_are_held_and_the_function_continues_on_its_tangent() -> None:
    x = torch.linspace(0, 1, 11, dtype=torch.float64).reshape(-1, 1)
    outside = torch.tensor([[-0.5], [1.7]], dtype=torch.float64)
    ends = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    for name in ("fd-central", "local-poly", "spline"):
        algo = build(name)
        (state,) = algo.adapt(x, x**2, 0)
        predictor = Predictor(algo, state)
        close(predictor.derivatives(outside, 1)[0], predictor.derivatives(ends, 1)[0], 1e-12)
    spline = build("spline")
    (state,) = spline.adapt(x, x**2, 0)
    # The natural spline's linear continuation: f'' = 0 beyond the data.
    close(Predictor(spline, state).derivatives(outside, 2)[1], torch.zeros_like(outside), 0)
    slope = Predictor(spline, state).derivatives(ends, 1)[0]
    close(spline.predict(state, outside), spline.predict(state, ends) + slope * (outside - ends), 1e-12)


def test_repeated_inputs_are_merged_at_their_mean() -> None:
    x = torch.tensor([[0.0], [1.0], [1.0], [2.0]], dtype=torch.float64)
    y = torch.tensor([[0.0], [0.5], [1.5], [2.0]], dtype=torch.float64)
    algo = build("fd-forward")
    (state,) = algo.adapt(x, y, 0)
    one = torch.tensor([[1.0]], dtype=torch.float64)
    close(algo.predict(state, one), one, 0)
    with pytest.raises(ValueError, match=r"fd-central needs at least 3 distinct support points .*got 2"):
        build("fd-central", suite=_Suite(order=2)).adapt(torch.tensor([[0.0], [1.0], [1.0], [0.0]]),
                                                         torch.rand(4, 1), 0)


@pytest.mark.parametrize("name", NAMES)
def test_inputs_must_be_one_dimensional(name: str) -> None:
    algo = build(name)
    with pytest.raises(ValueError, match=r"support_x must be shaped \[K, 1\], got \(6, 2\)"):
        algo.adapt(torch.rand(6, 2), torch.rand(6, 1), 0)
    with pytest.raises(ValueError, match=r"support_y must be shaped \[K, 1\]"):
        algo.adapt(torch.rand(6, 1), torch.rand(5, 1), 0)


# --- too few points: the grid's check and the runtime's ----------------------------------------------


class _Config:
    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


class _Suite(SinusoidSuite):
    """The sinusoid suite with a configuration that may ask for second derivatives."""

    def __init__(self, **fields: Any) -> None:
        super().__init__(SinusoidConfig())
        self.config = _Config(**{**dataclasses.asdict(SinusoidConfig()), **fields})


@pytest.mark.parametrize(("name", "hparams", "config", "reason"), [
    ("fd-central", {}, {"shots": 1}, "fd-central needs at least 2 support points for a first derivative "
                                     "(a finite difference needs two points); suite 's' gives K = 1 "
                                     "(shots / test_shots)"),
    ("fd-forward", {}, {"shots": 5, "test_shots": 1}, "fd-forward needs at least 2 support points"),
    ("fd-central", {}, {"shots": 2, "order": 2}, "needs at least 3 support points for derivatives up to "
                                                 "order 2 (a second difference needs three points)"),
    ("fd-central", {}, {"shots": 9, "order": 3}, "fd-central answers derivatives up to order 2, the suite "
                                                 "asks for order 3"),
    ("spline", {}, {"shots": 4}, "spline needs at least 5 support points for a first derivative (scipy's "
                                 "make_smoothing_spline needs at least 5 points)"),
    ("local-poly", {"degree": 3}, {"shots": 3}, "local-poly needs at least 4 support points for a first "
                                                "derivative (a degree 3 polynomial needs 4 points)"),
    ("local-poly", {"degree": 1}, {"shots": 10, "order": 2}, "a degree 1 polynomial has no useful derivative "
                                                             "of order 2 (set degree >= 2)"),
])
def test_impossible_settings_are_refused_before_and_when_built(name: str, hparams: dict, config: dict,
                                                               reason: str) -> None:
    spec = REGISTRY.algorithms[name].spec
    assert spec.check is db.check
    assert reason in spec.check(spec.hparams(**hparams), "s", _Config(**{"test_shots": None, **config}))
    with pytest.raises(ValueError, match="needs|answers|no useful"):
        build(name, suite=_Suite(**config), **hparams)


@pytest.mark.parametrize(("name", "config"), [
    ("fd-central", {"shots": 2}), ("fd-forward", {"shots": 3, "order": 2}),
    ("spline", {"shots": 5, "order": 3}), ("local-poly", {"shots": 3}),
    ("fd-central", {"test_shots": 10}),  # a suite without `shots` is not checked
])
def test_possible_settings_pass_the_check(name: str, config: dict) -> None:
    spec = REGISTRY.algorithms[name].spec
    assert spec.check(spec.hparams(), "s", _Config(**config)) == ""


def test_hparams_reject_impossible_values() -> None:
    with pytest.raises(ValueError, match=r"^degree must be from 1 .* to 10, got 0"):
        db.LocalPolyHparams(degree=0)
    with pytest.raises(ValueError, match=r"^window must be None or at least degree \+ 1 = 4 points"):
        db.LocalPolyHparams(degree=3, window=3)
    with pytest.raises(ValueError, match=r"^smoothing must be None \(chosen by GCV\) or a penalty >= 0, "
                                         r"got -1"):
        db.SplineHparams(smoothing=-1.0)
    with pytest.raises(ValueError, match=r"^fit_steps must be >= 1"):
        db.ScratchNetHparams(fit_steps=0)


def test_the_grid_refuses_a_named_pair_and_skips_it_under_a_wildcard(tmp_path: Path) -> None:
    named = tmp_path / "named.toml"
    named.write_text('name = "named"\n[[block]]\nalgorithms = ["spline", "fd-central"]\n'
                     'suites = [{ name = "sinusoid", shots = [3, 10] }]\n')
    with pytest.raises(GridError, match=r"named.toml:3: key 'algorithms': algorithm 'spline' cannot run on "
                                        r"suite 'sinusoid' with \[shots=3\]: spline needs at least 5 support "
                                        r"points"):
        load_grid(str(named), REGISTRY)
    wild = tmp_path / "wild.toml"
    wild.write_text('name = "wild"\n[[block]]\nalgorithms = "*"\n'
                    'suites = [{ name = "sinusoid", shots = [3, 10] }]\n')
    grid = load_grid(str(wild), REGISTRY)
    ids = [c.id for c in grid.cells]
    assert "spline/sinusoid[shots=10]/cpu/seed=0" in ids and "fd-central/sinusoid[shots=3]/cpu/seed=0" in ids
    (skip,) = [s for s in grid.skipped if s.cell.algorithm == "spline"]
    assert skip.cell.id == "spline/sinusoid[shots=3]/cpu/seed=0"
    assert "at least 5 support points" in skip.reason


# --- scratch-net -------------------------------------------------------------------------------------


def test_scratch_net_is_reproducible_for_a_cell_seed_and_independent_of_episode_order() -> None:
    x = points(10, seed=8).float() * 5
    y = torch.sin(x)
    q = torch.linspace(-4, 4, 9).reshape(-1, 1)

    def fitted(seed: int, before: int = 0) -> torch.Tensor:
        torch.manual_seed(seed)  # what the harness does per cell, before the algorithm is built
        algo = build("scratch-net", fit_steps=50)
        for _ in range(before):  # other episodes first (validation, another order of test episodes)
            algo.adapt(torch.rand(10, 1), torch.rand(10, 1), 0)
        state_before = torch.random.get_rng_state()
        (state,) = algo.adapt(x, y, 0)
        assert torch.equal(torch.random.get_rng_state(), state_before)  # the global generator is left alone
        return Predictor(algo, state).derivatives(q, 1)[0]

    torch.testing.assert_close(fitted(0), fitted(0, before=2), rtol=0, atol=0)
    assert not torch.allclose(fitted(0), fitted(1))


def test_scratch_net_fits_the_support_and_autograd_gives_its_derivative() -> None:
    torch.manual_seed(0)
    algo = build("scratch-net")
    x = 10 * torch.rand(10, 1, generator=torch.Generator().manual_seed(9)) - 5
    y = 2 * torch.sin(x - 0.3)
    (state,) = algo.adapt(x, y, 0)
    # Measured: support MSE 0.002 after the default 500 Adam steps (the targets' variance is about 2).
    assert float(((algo.predict(state, x) - y) ** 2).mean()) < 1e-2
    q = torch.linspace(-4, 4, 7, dtype=torch.float32).reshape(-1, 1)
    (first,) = Predictor(algo, state).derivatives(q, 1)
    # Central differences of the network itself: the harness's autograd derivative is the net's slope
    # (a ReLU net is piecewise linear, so h is small enough to stay within one piece almost surely).
    h = 1e-3
    with torch.no_grad():
        slope = (algo.predict(state, q + h) - algo.predict(state, q - h)) / (2 * h)
    close(first, slope, 2e-2)


# --- through the runner ------------------------------------------------------------------------------

SMALL = Budget(iterations=4, val_interval=2, val_episodes=2, test_episodes=3, threads=1)


@pytest.mark.parametrize("name", NAMES)
def test_a_cell_runs_on_the_sinusoid_suite(name: str) -> None:
    hparams = (("fit_steps", 30),) if name == "scratch-net" else ()
    record = run_one(Cell(name, hparams, "sinusoid", (), "cpu", 0, SMALL), REGISTRY, in_process=True)
    assert record["status"] == "ok", record.get("traceback", record["reason"])
    metric = record["metric"]
    assert math.isfinite(metric["mean"]) and metric["n"] == 3 and metric["final_step"] == 0
    # Nothing to meta-train: straight to the test episodes, whatever the budget's iterations.
    assert record["params"] == 0 and record["timings"]["iterations"] == 0
    assert record["timings"]["stopped_by"] == "nothing to meta-train" and record["curve"] == []
    if name == "spline":  # sines of 10 points: the spline's fit is far better than a constant (MSE ~ 4)
        assert metric["mean"] < 1.0


@pytest.mark.parametrize("name", NAMES)
def test_a_cell_runs_on_the_derivatives_suite_with_second_derivatives(name: str) -> None:
    hparams = {"scratch-net": (("fit_steps", 30),), "local-poly": (("degree", 3),)}.get(name, ())
    cell = Cell(name, hparams, "derivatives", (("order", 2), ("shots", 20)), "cpu", 0, SMALL)
    record = run_one(cell, REGISTRY, in_process=True)
    assert record["status"] == "ok", record.get("traceback", record["reason"])
    assert math.isfinite(record["metric"]["mean"]) and record["metric"]["n"] == 3
    # 20 noiseless points: far better than the right constant (a normalised error of 1).
    if name in ("fd-central", "spline", "local-poly"):
        assert record["metric"]["mean"] < 0.5
