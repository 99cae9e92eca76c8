"""The tuned hand-designed optimisers: adapt is a plain torch.optim loop, the batched learning-rate search
agrees with it, the tuned SGD rate is the one the quadratic's Lipschitz constant predicts, and a real
cell on the metaopt suite records the loss curve, the trajectory metrics and the chosen rate."""

from __future__ import annotations

import math

import pytest
import torch

from harness.cells import run_one
from harness.registry import build_plugin_manager
from harness.specs import Budget, Cell
from metaharness_plugins.algorithms._optimizers import SGD, Adam, Momentum, RMSprop
from metaharness_plugins.algorithms.optimizers import (
    AdamHparams,
    MomentumHparams,
    RMSpropHparams,
    SGDHparams,
)
from metaharness_plugins.backends.cpu import CPUBackend
from metaharness_plugins.suites._metaopt import MetaOptSuite
from metaharness_plugins.suites.metaopt import MetaOptConfig
from metaharness_plugins.suites.sinusoid import SinusoidConfig, SinusoidSuite

#: (algorithm class, its hparams, the torch.optim optimiser a hand-written loop builds for a rate)
RULES = [
    (SGD, SGDHparams(lr=0.05), lambda p, lr: torch.optim.SGD(p, lr=lr)),
    (Momentum, MomentumHparams(lr=0.05), lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9)),
    (Momentum, MomentumHparams(lr=0.05, nesterov=True),
     lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, nesterov=True)),
    (RMSprop, RMSpropHparams(lr=0.01), lambda p, lr: torch.optim.RMSprop(p, lr=lr)),
    (Adam, AdamHparams(lr=0.01), lambda p, lr: torch.optim.Adam(p, lr=lr)),
]


def build(cls, hparams, suite):
    return cls(hparams, suite.build_model(), suite, CPUBackend())


def draw(suite, n=3, seed=0, split="train"):
    return suite.sample(n, torch.Generator().manual_seed(seed), split)


@pytest.mark.parametrize("problem", ["quadratic", "mlp"])
@pytest.mark.parametrize(("cls", "hparams", "reference"), RULES,
                         ids=["sgd", "momentum", "nesterov", "rmsprop", "adam"])
def test_adapt_is_a_hand_run_torch_optim_loop(cls, hparams, reference, problem):
    suite = MetaOptSuite(MetaOptConfig(problem=problem, dtype="float64"))
    batch = draw(suite, n=1)
    x, y = batch.support_x[0], batch.support_y[0]
    states = build(cls, hparams, suite).adapt(x, y, 15)
    assert len(states) == 16 and not any(v.requires_grad for s in states for v in s.values())
    # The reference: theta_0 by hand (zeros; for the MLP nn.Linear's init bounds hold), a torch.optim loop.
    start = suite.initial_parameters(x)
    params = {k: v.clone().requires_grad_(True) for k, v in start.items()}
    optimizer = reference(list(params.values()), hparams.lr)
    for k in start:
        torch.testing.assert_close(states[0][k], start[k], rtol=0, atol=0)
    for step in range(1, 16):
        optimizer.zero_grad()
        suite.objective(params, x, y).backward()
        optimizer.step()
        for k in params:
            torch.testing.assert_close(states[step][k], params[k].detach(), rtol=0, atol=0)
    assert float(suite.objective(states[-1], x, y)) < float(suite.objective(states[0], x, y))


def test_adapt_works_under_no_grad_and_states_do_not_alias():
    suite = MetaOptSuite(MetaOptConfig())
    batch = draw(suite, n=1)
    algo = build(SGD, SGDHparams(lr=0.05), suite)
    with torch.no_grad():
        states = algo.adapt(batch.support_x[0], batch.support_y[0], 3)
    assert not torch.equal(states[0]["theta"], states[3]["theta"])


@pytest.mark.parametrize(("cls", "hparams"), [(SGD, SGDHparams(lr_points=5)),
                                              (Adam, AdamHparams(lr_points=5)),
                                              (Momentum, MomentumHparams(lr_points=5, nesterov=True))])
@pytest.mark.parametrize("problem", ["quadratic", "logistic", "mlp"])
def test_the_batched_grid_search_equals_one_run_per_rate_and_problem(cls, hparams, problem):
    """One optimiser with a parameter group per rate over stacked problems, the objective under vmap, gives
    each run's own trajectory (the rules are elementwise)."""
    suite = MetaOptSuite(MetaOptConfig(problem=problem, steps=12, dtype="float64"))
    batch = draw(suite, n=3)
    algo = build(cls, hparams, suite)
    values = algo.grid_losses(batch)
    assert values.shape == (13, 5, 3)
    for r, lr in enumerate(algo.grid.tolist()):
        for i in range(3):
            states = algo.optimize(lr, batch.support_x[i], batch.support_y[i], 12)
            alone = torch.stack([suite.objective(s, batch.support_x[i], batch.support_y[i]) for s in states])
            torch.testing.assert_close(values[:, r, i], alone, rtol=1e-9, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("condition", [10.0, 100.0])
def test_tuned_sgd_rate_is_the_best_grid_rate_below_two_over_L(condition):
    """On 0.5 ||W theta - y||^2 the Hessian W^T W has largest eigenvalue L = condition: gradient descent
    converges for lr < 2 / L and diverges above. The tuned rate should be the largest grid rate below 2 / L
    (within a half-decade), and every rate above 2 / L should score far worse."""
    suite = MetaOptSuite(MetaOptConfig(condition=condition, steps=100))
    algo = build(SGD, SGDHparams(meta_batch_size=5), suite)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        algo.meta_train_step(suite.sample(5, generator, "train"))
    grid = algo.grid.tolist()
    assert grid == pytest.approx([10 ** (-4 + 0.5 * k) for k in range(13)])
    best_stable = max(lr for lr in grid if lr < 2 / condition)
    chosen = algo.describe()["chosen"]["lr"]
    assert abs(math.log10(chosen) - math.log10(best_stable)) <= 0.5 + 1e-9
    assert chosen == float(algo.meta_parameters()["lr"])
    scores = algo.describe()["grid_scores"]
    for lr, score in zip(grid, scores):
        if lr > 2 / condition:
            assert score is None or score > 5  # diverged (inf in float32), or log10 loss far above the start
    assert algo.describe()["tuning_problems"] == 10 and not algo.describe()["at_grid_edge"]


def test_the_chosen_rate_is_a_meta_parameter_and_a_fixed_rate_is_not_tuned():
    suite = MetaOptSuite(MetaOptConfig(steps=20))
    algo = build(Adam, AdamHparams(lr_points=3, lr_min=1e-3, lr_max=1e-1), suite)
    saved = algo.state_dict()
    loss = algo.meta_train_step(draw(suite))
    assert math.isfinite(loss) and algo.describe()["chosen"]["lr"] != float(saved["lr"])
    algo.load_state_dict(saved)  # the harness restores the best-validated checkpoint this way
    assert algo.describe()["chosen"]["lr"] == float(saved["lr"])
    assert algo.num_parameters() == 1 and algo.test_steps == 20
    fixed = build(SGD, SGDHparams(lr=0.03), suite)
    fixed.meta_train_step(draw(suite))
    info = fixed.describe()
    assert info == {"lr": 0.03, "tuned": False}


def test_a_suite_without_the_optimisation_interface_is_refused():
    suite = SinusoidSuite(SinusoidConfig())
    with pytest.raises(TypeError, match="lacks initial_parameters, objective, horizon, predict"):
        SGD(SGDHparams(), suite.build_model(), suite, CPUBackend())


@pytest.mark.parametrize(("cls", "config", "message"), [
    (SGDHparams, {"lr": 0.0}, "lr must be None (tune it) or a learning rate > 0"),
    (SGDHparams, {"lr_min": -1.0}, "lr_min must be > 0"),
    (SGDHparams, {"lr_max": 1e-5}, "lr_max must be >= lr_min"),
    (SGDHparams, {"lr_points": 0}, "lr_points must be >= 1"),
    (SGDHparams, {"lr_points": 1}, "lr_points must be >= 2 to span"),
    (SGDHparams, {"criterion": "auc"}, "criterion must be one of mean_log_loss, final_log_loss"),
    (SGDHparams, {"meta_batch_size": 0}, "meta_batch_size must be >= 1"),
    (MomentumHparams, {"momentum": 1.0}, "momentum must be in (0, 1)"),
    (RMSpropHparams, {"alpha": 1.0}, "alpha must be in [0, 1)"),
    (AdamHparams, {"beta2": 1.0}, "beta2 must be in [0, 1)"),
    (AdamHparams, {"eps": 0.0}, "eps must be > 0"),
])
def test_hparam_errors_name_the_field(cls, config, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        cls(**config)
    assert SGDHparams(lr_points=1, lr_min=0.1, lr_max=0.1).lr_grid() == (0.1,)


REGISTRY = build_plugin_manager(entry_points=False)


@pytest.mark.parametrize("algorithm", ["sgd", "momentum", "rmsprop", "adam"])
def test_a_real_cell_records_the_final_loss_trajectory_metrics_and_the_chosen_rate(algorithm):
    budget = Budget(iterations=2, val_interval=1, val_episodes=2, test_episodes=3, threads=1)
    suite_config = (("steps", 20), ("test_dim", 20), ("test_steps", 30))
    cell = Cell(algorithm, (("meta_batch_size", 2),), "metaopt", suite_config, "cpu", 0, budget)
    record = run_one(cell, REGISTRY, in_process=True)
    assert record["status"] == "ok", record.get("traceback", record["reason"])
    metric = record["metric"]
    assert metric["name"] == "final_loss" and metric["n"] == 3 and metric["final_step"] == 30
    assert math.isfinite(metric["mean"]) and metric["mean"] < metric["per_step"][0]["mean"]
    trajectory = metric["trajectory"]
    assert set(trajectory) == {"log_auc", "steps_to_target"}
    assert trajectory["log_auc"]["label"] == "mean log10 loss" and trajectory["log_auc"]["n"] == 3
    assert 0 <= trajectory["steps_to_target"]["mean"] <= 31
    info = record["algorithm_info"]
    assert any(math.isclose(info["chosen"]["lr"], lr) for lr in info["lr_grid"])
    assert info["tuning_problems"] == 4
    assert record["suite_info"]["leaderboard_note"].startswith("out of distribution")
    assert len(record["curve"]) == 2 and record["params"] == 1
