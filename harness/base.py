"""Base classes a plugin subclasses: Algorithm (meta-learner), TaskSuite (episodes), Backend (device).

The harness owns the outer loop, evaluation, seeding, timing and logging. An algorithm supplies a
meta-train step on a batch of tasks, `adapt` (the same inner loop at train and test time) and
`predict`; a suite supplies episodes, a model and the task metric; a backend supplies a device.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # imported where used: subclassing these must not import torch (see harness.specs.LazyFactory)
    import torch
    from torch import nn

    from harness.specs import TaskBatch


class TaskSuite(abc.ABC):
    """A distribution of tasks. Built by `TaskSuiteSpec.factory(config)`.

    Episodes are sampled on the CPU from the generator the harness passes, so they depend on
    (config, split, generator seed) alone: the harness derives the test generator from the suite
    configuration and the test seed, which gives every algorithm the same test episodes.
    """

    metric_name: ClassVar[str] = "mse"
    #: How tables print the metric ("MSE", "error rate"); empty means `metric_name` as it is.
    metric_label: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = False

    def __init__(self, config: Any) -> None:
        self.config = config

    @abc.abstractmethod
    def sample(self, n_tasks: int, generator: torch.Generator, split: str) -> TaskBatch:
        """Return `n_tasks` episodes of `split` ("train", "val" or "test") drawn with `generator`."""

    def fixed_episodes(self, split: str) -> TaskBatch | None:
        """The episodes of `split` when the suite defines them rather than samples them, else None.

        A benchmark with a published, fixed test set (Lake et al.'s twenty one-shot runs) returns all
        of it here; the runner then evaluates exactly those episodes, however many there are, in place
        of `budget.test_episodes` (or `val_episodes`) drawn with `sample`, and records their number.
        The default, None, means the split is sampled.
        """
        return None

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised default model for this suite (initialised from torch's global RNG)."""

    @abc.abstractmethod
    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean training loss of one task's predictions (a scalar; used inside inner loops)."""

    @abc.abstractmethod
    def metric(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The reported metric of one task's predictions (a scalar tensor)."""

    def score(self, predictor: Predictor, query_x: torch.Tensor, query_y: torch.Tensor) -> torch.Tensor:
        """The metric of one adapted learner on one episode's query set (no task dimension).

        The runner calls this for every state `adapt` returns, for every validation and test episode, and
        not under `torch.no_grad`: a suite that scores more than outputs may use the predictor itself, e.g.
        differentiate it with respect to its input (`Predictor.derivatives`) or read its state. The
        default scores the outputs: `metric(predictor(query_x), query_y)`, without a graph.
        """
        import torch

        with torch.no_grad():
            return self.metric(predictor(query_x), query_y)

    def adaptation_steps(self, split: str) -> int | None:
        """How many steps `adapt` takes on a validation or test episode of `split`; None (the default)
        leaves it to the algorithm (`Algorithm.test_steps`). A suite whose tasks fix the horizon (an
        optimisation problem run for T optimiser steps) returns it."""
        return None

    #: Column labels of the metrics `trajectory_metrics` returns (name -> label); lower is better for all.
    trajectory_labels: ClassVar[dict[str, str]] = {}

    def trajectory_metrics(self, values: list[float]) -> dict[str, float]:
        """Metrics of one episode computed from its metric after 0, 1, ..., steps adaptation steps
        (`values[k]` is `score` after k steps): the area under a loss curve, the steps to reach a target.
        The runner records the mean and 95% interval of each over the test episodes and the leaderboard
        shows them beside the metric. The default has none."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Extra facts for the record (data files, checksums, ...). A key "leaderboard_note" holds a
        sentence the leaderboard prints under the table (say, that the test tasks are out of distribution)."""
        return {}


class Predictor:
    """An adapted learner as a function of its inputs: `algorithm.predict(state, x)`, what `TaskSuite.score`
    is given. `state` is one of the states `Algorithm.adapt` returned."""

    def __init__(self, algorithm: Algorithm, state: Any) -> None:
        self.algorithm = algorithm
        self.state = state

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.algorithm.predict(self.state, x)

    def distribution(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mean, std) of the learner's Gaussian predictive distribution at `x`
        (`Algorithm.predict_distribution`), or None for a learner that predicts points only."""
        return self.algorithm.predict_distribution(self.state, x)

    def derivatives(self, x: torch.Tensor, order: int) -> list[torch.Tensor]:
        """[df/dx, ..., d^order f/dx^order] at the points `x` ([points, 1]), each shaped like `self(x)`, detached.

        A learner that answers derivatives itself (`Algorithm.predict_derivatives`) is asked; otherwise
        the adapted function is differentiated with respect to its input by autograd. That needs scalar
        inputs and a pointwise predictor (output row q depends on x[q] alone, as for an MLP), so the
        derivative of the summed outputs is every point's own derivative.
        """
        import torch

        if not isinstance(order, int) or isinstance(order, bool) or order < 1:
            raise ValueError(f"order must be a positive integer, got {order!r}")
        direct = self.algorithm.predict_derivatives(self.state, x, order)
        if direct is not None:
            if len(direct) != order:
                raise RuntimeError(f"{type(self.algorithm).__name__}.predict_derivatives returned {len(direct)} "
                                   f"derivatives for order {order}; it must return one per order")
            return [d.detach() for d in direct]
        if x.dim() != 2 or x.shape[-1] != 1:
            raise ValueError(f"derivatives with respect to the input need scalar inputs shaped [points, 1], "
                             f"got {tuple(x.shape)}")
        with torch.enable_grad():
            point = x.detach().requires_grad_(True)
            value = self(point)
            out: list[torch.Tensor] = []
            for k in range(1, order + 1):
                grad = None
                if value.requires_grad:
                    (grad,) = torch.autograd.grad(value.sum(), point, create_graph=k < order, allow_unused=True)
                # No path to the input (a constant function, or a piecewise-linear net's second derivative).
                value = torch.zeros_like(point) if grad is None else grad
                out.append(value.detach())
        return out


class Algorithm(abc.ABC):
    """A meta-learner. Built by `AlgorithmSpec.factory(hparams=, model=, suite=, backend=)`.

    `meta_parameters()` are what is meta-learned (and counted, checkpointed, kept at the best
    validation score). `adapt` returns the learner's state after 0, 1, ..., `steps` inner steps so
    the harness can report the metric after each test-time step; `predict(state, x)` evaluates one.
    """

    #: False for a learner with nothing to meta-train (a finite difference, a spline, a network fitted
    #: from scratch on each task): the runner then skips meta-training and validation and goes straight
    #: to the test episodes, whatever the budget's iterations.
    meta_trains: ClassVar[bool] = True

    def __init__(self, hparams: Any, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
        self.hparams = hparams
        self.model = model
        self.suite = suite
        self.backend = backend
        self.device = backend.device

    @property
    def meta_batch_size(self) -> int:
        """Tasks per meta-iteration (the hyper-parameter `meta_batch_size` when it has one)."""
        return int(getattr(self.hparams, "meta_batch_size", 1))

    @property
    def test_steps(self) -> int:
        """Inner steps at test time (the hyper-parameter `test_steps` when it has one, else 0)."""
        return int(getattr(self.hparams, "test_steps", 0))

    @abc.abstractmethod
    def meta_parameters(self) -> dict[str, torch.Tensor]:
        """Every meta-learned tensor by name (model weights, learned learning rates, ...)."""

    @abc.abstractmethod
    def meta_train_step(self, batch: TaskBatch) -> float:
        """One meta-iteration on `batch` (already on the device); returns the meta-training loss."""

    @abc.abstractmethod
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int) -> list[Any]:
        """Adapt to one task's support set; return states after 0..steps inner steps (len steps+1)."""

    @abc.abstractmethod
    def predict(self, state: Any, x: torch.Tensor) -> torch.Tensor:
        """Predictions of an adapted state on inputs `x`."""

    def predict_derivatives(self, state: Any, x: torch.Tensor, order: int) -> list[torch.Tensor] | None:
        """[df/dx, ..., d^order f/dx^order] of an adapted state at `x`, for a learner that answers
        derivatives directly (finite differences, a fitted spline); None (the default) means "differentiate
        `predict` with respect to its input" (`Predictor.derivatives`)."""
        return None

    def predict_distribution(self, state: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mean, std) of a Gaussian predictive distribution of an adapted state at `x`, each shaped like
        `predict(state, x)`, for a probabilistic regressor (a neural process); None (the default) for a
        learner that predicts points only. Likelihood measurements (`gaussian-nll`) read it."""
        return None

    def describe(self) -> dict[str, Any]:
        """Facts for the record ("algorithm_info"). A key "chosen" maps hyper-parameters the algorithm chose
        itself while meta-training (a learning rate tuned on meta-training tasks) to their values; the
        leaderboard shows them. The default says nothing."""
        return {}

    def num_parameters(self) -> int:
        return sum(int(t.numel()) for t in self.meta_parameters().values())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """A detached copy of the meta-parameters (the runner keeps the best one)."""
        return {k: v.detach().clone() for k, v in self.meta_parameters().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        import torch

        with torch.no_grad():
            for name, tensor in self.meta_parameters().items():
                tensor.copy_(state[name])


class Backend(abc.ABC):
    """A hardware backend: availability, placement, synchronisation, peak memory, determinism."""

    name: ClassVar[str] = ""
    memory_kind: ClassVar[str] = ""

    @abc.abstractmethod
    def availability(self) -> tuple[bool, str]:
        """(True, "") when usable here, else (False, reason), e.g. (False, "no CUDA device")."""

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        """The torch device tensors go to."""

    def configure(self, *, threads: int | None, deterministic: bool) -> dict[str, Any]:
        """Apply thread count and determinism settings in the cell's process; return what was set."""
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        return {"threads": torch.get_num_threads(), "deterministic": deterministic}

    def synchronize(self) -> None:
        """Wait for queued device work (called around every timed region)."""

    @abc.abstractmethod
    def reset_peak_memory(self) -> None:
        """Start a new peak-memory window."""

    @abc.abstractmethod
    def peak_memory_bytes(self) -> int:
        """Peak memory since the last reset, in bytes, as this backend measures it (`memory_kind`)."""

    def describe(self) -> dict[str, Any]:
        """Device facts for the record (GPU name, driver, ...)."""
        return {}


def split_classifier(
    model: nn.Module, algorithm: str, role: str = "classifier (its embedding is everything before that layer)"
) -> tuple[nn.Sequential, nn.Linear]:
    """(body, head) of a classification model: an nn.Sequential without, and with only, its last Linear.

    Classification suites build models of that shape; algorithms that treat the last layer apart
    (metric-based heads, head-only adaptation) split them here, with a clear error otherwise.
    """
    from torch import nn

    if not isinstance(model, nn.Sequential) or len(model) < 2 or not isinstance(model[-1], nn.Linear):
        last = type(model[-1]).__name__ if isinstance(model, nn.Sequential) and len(model) else None
        raise TypeError(f"{algorithm} needs the suite's model to be an nn.Sequential ending in an nn.Linear "
                        f"{role}; got {type(model).__name__}" + (f" ending in {last}" if last else ""))
    return nn.Sequential(*list(model)[:-1]), model[-1]
