"""The gaussian-nll measurement: the log-likelihood and interval coverage against scipy on fixed numbers,
blank columns for point predictors, the options, registration, and a real CNP cell through the runner."""

from __future__ import annotations

import math

import numpy as np
import pluggy
import pytest
import torch
from scipy import stats

import harness.hookspecs
from harness.base import Predictor
from harness.cells import run_one
from harness.specs import Budget, Cell, measurement_requests
from metaharness_plugins.analysis import likelihood as likelihood_module
from metaharness_plugins.analysis._likelihood import GaussianNLL
from metaharness_plugins.analysis.likelihood import GaussianNLLOptions


class Gaussian:
    """An 'algorithm' whose adapted state is a fixed predictive (mean, std) per query point."""

    def predict(self, state, x):
        return state[0]

    def predict_distribution(self, state, x):
        return state


class Points(Gaussian):
    def predict_distribution(self, state, x):
        return None


def _measure(algorithm, mean, std, y, **options) -> dict[str, float]:
    as_column = lambda v: torch.tensor(v, dtype=torch.float64).reshape(-1, 1)  # noqa: E731
    predictor = Predictor(algorithm, (as_column(mean), as_column(std)))
    target = as_column(y)
    return GaussianNLL(GaussianNLLOptions(**options), None).measure(predictor, torch.zeros(len(y), 1), target,
                                                                   torch.Generator())


def test_nll_and_coverage_equal_scipys_on_fixed_numbers() -> None:
    mean, std = [0.0, 1.0, -2.0, 0.5], [1.0, 0.5, 2.0, 0.1]
    y = [0.1, 1.9, 2.5, 0.5]  # standardised residuals 0.1, 1.8, 2.25, 0
    out = _measure(Gaussian(), mean, std, y, coverage=[0.5, 0.95])
    expected = -np.mean(stats.norm.logpdf(y, loc=mean, scale=std))
    assert out["nll"] == pytest.approx(expected, rel=1e-12)
    z50, z95 = stats.norm.ppf(0.75), stats.norm.ppf(0.975)  # 0.674, 1.960
    residuals = np.abs(np.subtract(y, mean)) / np.array(std)
    assert out["coverage_0.5"] == np.mean(residuals <= z50) == 0.5
    assert out["coverage_0.95"] == np.mean(residuals <= z95) == 0.75


def test_vector_outputs_sum_over_dimensions_and_bad_predictions_give_nan() -> None:
    mean, std = torch.zeros(3, 2, dtype=torch.float64), torch.full((3, 2), 2.0, dtype=torch.float64)
    y = torch.tensor([[0.5, -1.0], [3.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    out = GaussianNLL(GaussianNLLOptions(coverage=[0.5]), None).measure(
        Predictor(Gaussian(), (mean, std)), torch.zeros(3, 1), y, torch.Generator())
    per_point = -stats.norm.logpdf(y.numpy(), scale=2.0).sum(axis=1)  # as the CNP's training loss
    assert out["nll"] == pytest.approx(per_point.mean(), rel=1e-12)
    assert out["coverage_0.5"] == np.mean(np.abs(y.numpy()) <= 2.0 * stats.norm.ppf(0.75))
    for bad_mean, bad_std in ((torch.full((3, 2), math.nan), std), (mean, torch.zeros(3, 2))):
        values = GaussianNLL(GaussianNLLOptions(coverage=[0.5]), None).measure(
            Predictor(Gaussian(), (bad_mean.double(), bad_std)), torch.zeros(3, 1), y, torch.Generator())
        assert set(values) == {"nll", "coverage_0.5"} and all(math.isnan(v) for v in values.values())


def test_point_predictors_leave_the_columns_out_and_shapes_are_checked() -> None:
    assert _measure(Points(), [0.0], [1.0], [0.0]) == {}
    predictor = Predictor(Gaussian(), (torch.zeros(3, 1), torch.ones(3)))
    with pytest.raises(ValueError, match=r"a mean and a std shaped like the targets \(3, 1\)"):
        GaussianNLL(GaussianNLLOptions(), None).measure(predictor, torch.zeros(3, 1), torch.zeros(3, 1),
                                                        torch.Generator())


def test_columns_and_options() -> None:
    columns = GaussianNLL(GaussianNLLOptions(coverage=[0.9, 0.995]), None).columns()
    assert columns == {"nll": ("NLL (nats)", False), "coverage_0.9": ("coverage of the 90% interval", None),
                       "coverage_0.995": ("coverage of the 99.5% interval", None)}
    assert GaussianNLLOptions(coverage=[]).coverage == ()
    for bad, message in (([1.0], "strictly between 0 and 1"), ([0.5, 0.5], "distinct"), ("0.5", "a list of"),
                         ([True], "a list of")):
        with pytest.raises(ValueError, match=message):
            GaussianNLLOptions(coverage=bad)


def test_registration() -> None:
    manager = pluggy.PluginManager("harness")
    manager.add_hookspecs(harness.hookspecs)
    manager.register(likelihood_module)
    (spec,) = [s for result in manager.hook.harness_register_measurements() for s in result]
    assert (spec.name, spec.options, spec.task_kinds) == ("gaussian-nll", GaussianNLLOptions,
                                                          frozenset({"regression"}))
    assert spec.factory.resolve() is GaussianNLL


def test_a_cnp_cell_gets_its_likelihood_and_maml_blank_columns(registry) -> None:
    budget = Budget(iterations=30, val_interval=30, val_episodes=4, test_episodes=20, threads=1)
    requests = measurement_requests([("gaussian-nll", {"coverage": [0.5, 0.95]})])
    records = {name: run_one(Cell(name, hparams, "sinusoid", (("shots", 5),), "cpu", 0, budget,
                                  measurements=requests), registry, in_process=True)
               for name, hparams in (("cnp", ()), ("maml", (("meta_batch_size", 2),)))}
    cnp, maml = records["cnp"], records["maml"]
    assert cnp["status"] == maml["status"] == "ok"
    columns = cnp["measurements"]
    assert set(columns) == {"nll", "coverage_0.5", "coverage_0.95"}
    assert all(entry["n"] == 20 for entry in columns.values())
    assert np.isfinite(columns["nll"]["mean"]) and 0 <= columns["coverage_0.5"]["mean"] <= 1
    assert columns["coverage_0.5"]["mean"] <= columns["coverage_0.95"]["mean"]
    assert not maml["measurements"]  # a point predictor: no column has a value
