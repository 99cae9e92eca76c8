"""The metaopt suite itself (the `metaopt` plugin registers it; imported when a cell builds it).

Besides the `TaskSuite` contract it offers the duck-typed interface every optimisation algorithm uses
(an algorithm never imports this module): `initial_parameters(support_x)`, `objective(params, x, y)`,
`horizon(split)`, plus `predict(params, x)` (the optimisee's outputs, for an algorithm's `predict`).
"""

from __future__ import annotations

import functools
import hashlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness import TaskBatch, TaskSuite
from harness.specs import SPLITS
from metaharness_plugins.optimisation import LOG_FLOOR

#: Seed of the one fixed permutation that splits the digits into train / val / test pools.
DIGITS_SPLIT_SEED = 20160601
#: Parameter names: they also tell `objective` which problem an iterate belongs to, inside torch.func
#: transforms where the data cannot be inspected.
QUADRATIC_KEY, LOGISTIC_KEY = "theta", "w"


@functools.cache
def digits(expected: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits as (pixels in [0, 1], float64 [1797, 64]; labels int64 [1797])."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.data, dtype=torch.float64) / 16.0  # pixel counts 0..16 (the UCI format)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    if images.shape[0] != expected:
        raise RuntimeError(f"sklearn's load_digits returned {images.shape[0]} images, expected {expected}")
    return images, labels


def digits_pools(sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    """Disjoint image indices per split (`sizes` of them, 1797 in all), from one fixed permutation."""
    order = torch.randperm(sum(sizes.values()), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    pools, start = {}, 0
    for split in SPLITS:
        pools[split] = order[start:start + sizes[split]]
        start += sizes[split]
    return pools


def orthonormal(n_tasks: int, rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """[n_tasks, rows, cols] matrices with Haar-distributed orthonormal columns (rows >= cols).

    QR of a Gaussian matrix with R's diagonal made positive (Mezzadri 2007): without the sign fix the
    distribution of Q depends on the QR implementation's sign convention and is not Haar.
    """
    gauss = torch.randn(n_tasks, rows, cols, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


def spectrum(dim: int, condition: float) -> torch.Tensor:
    """`dim` scales log-spaced from 1 to sqrt(condition): their squares span exactly [1, condition]."""
    return condition ** (0.5 * torch.linspace(0.0, 1.0, dim, dtype=torch.float64))


def digest(x: torch.Tensor) -> bytes:
    """A stable hash of a tensor's shape, dtype and values (the same problem gives the same bytes)."""
    data = x.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{tuple(data.shape)}{data.dtype}".encode())
    h.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return h.digest()


class MetaOptSuite(TaskSuite):
    """Episodes are optimisation problems; an algorithm's adapted states are the optimiser's iterates."""

    metric_name = "final_loss"
    metric_label = "final loss"
    higher_is_better = False
    trajectory_labels = {"log_auc": "mean log10 loss", "steps_to_target": "steps to target"}

    def __init__(self, config: Any) -> None:
        """`config`: a `MetaOptConfig` (the `metaopt` plugin's)."""
        super().__init__(config)
        self.dtype = getattr(torch, config.dtype)
        self.train_problem = config.setting("train").problem
        self.test_problem = config.setting("test").problem
        # When the test problems are of another kind, `initial_parameters` recognises a test episode by
        # the hash of its data, recorded here as `sample` draws it (a bounded set: the test episodes).
        self._test_digests: set[bytes] = set()

    # --- episodes -------------------------------------------------------------------------------

    def sample(self, n_tasks: int, generator: torch.Generator, split: str) -> TaskBatch:
        """`n_tasks` problems of `split`; query tensors are the support tensors (the objective is the
        training loss). Layout: quadratic W [T, n, dim], y [T, n, 1]; logistic features [T, n, dim],
        labels in {0, 1} [T, n, 1]; mlp digits pixels [T, n, 64], int64 classes [T, n]; synthetic mlp
        inputs [T, n, dim], targets [T, n, 1]."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        if not isinstance(n_tasks, int) or isinstance(n_tasks, bool) or n_tasks < 1:
            raise ValueError(f"n_tasks must be a positive integer, got {n_tasks!r}")
        s = self.config.setting(split)
        if s.problem == "quadratic":
            x, y = self._quadratics(n_tasks, s, generator)
        elif s.problem == "logistic":
            x, y = self._logistic(n_tasks, s, generator)
        elif self.config.data == "digits":
            x, y = self._digits(n_tasks, s, generator, split)
        else:
            x, y = self._teacher(n_tasks, s, generator)
        x = x.to(self.dtype)
        y = y if y.dtype == torch.int64 else y.to(self.dtype)
        if split == "test" and self.test_problem != self.train_problem:
            self._test_digests.update(digest(x[i]) for i in range(n_tasks))
        return TaskBatch(support_x=x, support_y=y, query_x=x, query_y=y)

    def _quadratics(self, n: int, s: Any, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        u = orthonormal(n, s.samples, s.dim, generator)
        v = orthonormal(n, s.dim, s.dim, generator)
        w = (u * spectrum(s.dim, s.condition)) @ v.transpose(-1, -2)
        y = torch.randn(n, s.samples, 1, generator=generator, dtype=torch.float64)
        return w, y

    def _features(self, n: int, s: Any, generator: torch.Generator) -> torch.Tensor:
        """Gaussian inputs whose covariance V diag(s^2) V^T has condition number `condition`."""
        v = orthonormal(n, s.dim, s.dim, generator)
        z = torch.randn(n, s.samples, s.dim, generator=generator, dtype=torch.float64)
        return (z * spectrum(s.dim, s.condition)) @ v.transpose(-1, -2)

    def _logistic(self, n: int, s: Any, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._features(n, s, generator)
        normal = torch.randn(n, s.dim, 1, generator=generator, dtype=torch.float64)
        labels = (x @ normal > 0).to(torch.float64)  # separable by the hyperplane x . normal = 0
        if not self.config.separable:
            flip = torch.rand(n, s.samples, 1, generator=generator, dtype=torch.float64)
            flip = flip < self.config.label_noise
            labels = torch.where(flip, 1.0 - labels, labels)
        return x, labels

    def _teacher(self, n: int, s: Any, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets of a random one-hidden-layer sigmoid network (the student's own architecture)."""
        x = self._features(n, s, generator)
        hidden = self.config.hidden
        a = torch.randn(n, s.dim, hidden, generator=generator, dtype=torch.float64) / math.sqrt(s.dim)
        c = torch.randn(n, hidden, 1, generator=generator, dtype=torch.float64) / math.sqrt(hidden)
        return x, torch.sigmoid(x @ a) @ c

    def _digits(self, n: int, s: Any, generator: torch.Generator, split: str
                ) -> tuple[torch.Tensor, torch.Tensor]:
        sizes = self.config.digits_pools
        images, labels = digits(sum(sizes.values()))
        pool = digits_pools(sizes)[split]
        picks = torch.stack([pool[torch.randperm(len(pool), generator=generator)[:s.samples]]
                             for _ in range(n)])
        return images[picks], labels[picks]

    # --- the optimisation interface -----------------------------------------------------------

    def horizon(self, split: str) -> int:
        """T of `split`: `steps` for train and val, `test_steps` (or `steps`) for test."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        return self.config.horizon(split)

    def adaptation_steps(self, split: str) -> int | None:
        """The harness evaluates val and test problems after every step 0..T of their horizon."""
        return self.horizon(split) if split in ("val", "test") else None

    def problem_of(self, support_x: torch.Tensor) -> str:
        """Which kind of problem an episode is (train and val: the training kind; test: `test_problem`)."""
        if self.test_problem == self.train_problem:
            return self.train_problem
        return self.test_problem if digest(support_x) in self._test_digests else self.train_problem

    def initial_parameters(self, support_x: torch.Tensor) -> dict[str, torch.Tensor]:
        """theta_0 of one episode (no task dimension), on support_x's device and dtype.

        Zeros for quadratics and logistic regression. For the MLP, PyTorch's nn.Linear initialisation
        (weights and biases U[-1/sqrt(fan_in), 1/sqrt(fan_in)]) drawn from a generator seeded by the
        sha256 of the episode's data: each problem has its own starting point, always the same one.
        """
        dim = int(support_x.shape[-1])
        like = {"dtype": support_x.dtype, "device": support_x.device}
        problem = self.problem_of(support_x)
        if problem == "quadratic":
            return {QUADRATIC_KEY: torch.zeros(dim, 1, **like)}
        if problem == "logistic":
            return {LOGISTIC_KEY: torch.zeros(dim, 1, **like)}
        generator = torch.Generator().manual_seed(int.from_bytes(digest(support_x)[:8], "little") >> 1)
        hidden, out = self.config.hidden, self.config.digits_classes if self.config.data == "digits" else 1

        def uniform(*shape: int, fan_in: int) -> torch.Tensor:
            bound = 1.0 / math.sqrt(fan_in)
            u = torch.rand(*shape, generator=generator, dtype=torch.float64)
            return ((2 * u - 1) * bound).to(**like)

        return {"w1": uniform(dim, hidden, fan_in=dim), "b1": uniform(hidden, fan_in=dim),
                "w2": uniform(hidden, out, fan_in=hidden), "b2": uniform(out, fan_in=hidden)}

    def predict(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The optimisee's outputs: W theta (quadratic), logits (logistic, mlp) or regression outputs."""
        if QUADRATIC_KEY in params:
            return x @ params[QUADRATIC_KEY]
        if LOGISTIC_KEY in params:
            return x @ params[LOGISTIC_KEY]
        return torch.sigmoid(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]

    def objective(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The scalar objective of one episode at `params`, in plain tensor ops (so torch.func's grad and
        vmap apply): 0.5 ||W theta - y||^2; mean BCE-with-logits + 0.5 l2 ||w||^2; MLP mean cross-entropy
        (digits) or mean squared error (synthetic). The parameter names say which problem it is."""
        out = self.predict(params, x)
        if QUADRATIC_KEY in params:
            return data_term("quadratic", out, y)
        if LOGISTIC_KEY in params:
            w = params[LOGISTIC_KEY]
            return data_term("logistic", out, y) + 0.5 * self.config.l2 * (w * w).sum()
        return data_term("mlp", out, y)

    # --- the TaskSuite contract -----------------------------------------------------------------

    def score(self, predictor: Any, query_x: torch.Tensor, query_y: torch.Tensor) -> torch.Tensor:
        """The objective at the optimiser's iterate (the predictor's state: a parameter dict)."""
        with torch.no_grad():
            return self.objective(predictor.state, query_x, query_y)

    def trajectory_metrics(self, values: list[float]) -> dict[str, float]:
        """log_auc: mean over steps 0..T of log10(max(loss, 1e-12)), the area under the log-loss curve;
        steps_to_target: the first step whose loss is <= the target (`target`, else `target_ratio` times
        the initial loss), T + 1 when it is never reached."""
        logs = [math.log10(max(v, LOG_FLOOR)) if not math.isnan(v) else math.inf for v in values]
        c = self.config
        target = c.target if c.target is not None else c.target_ratio * values[0]
        reached = next((k for k, v in enumerate(values) if v <= target), len(values))
        return {"log_auc": math.fsum(logs) / len(logs), "steps_to_target": float(reached)}

    def build_model(self) -> nn.Module:
        """The optimisee at the training dimensions, as an nn.Module: for the harness's bookkeeping only
        (the algorithms optimise the parameter dicts of `initial_parameters` through `objective`)."""
        s = self.config.setting("train")
        if s.problem in ("quadratic", "logistic"):
            return nn.Linear(s.dim, 1, bias=False).to(self.dtype)
        out = self.config.digits_classes if self.config.data == "digits" else 1
        return nn.Sequential(nn.Linear(s.dim, self.config.hidden), nn.Sigmoid(),
                             nn.Linear(self.config.hidden, out)).to(self.dtype)

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training problem's data term given the optimisee's outputs (`predict`); no l2 term."""
        return data_term("mlp" if not target.is_floating_point() else self.train_problem, prediction, target)

    def metric(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """As `loss`. The harness scores episodes with `score`, which also knows the test problems' kind."""
        return self.loss(prediction, target)

    def describe(self) -> dict[str, Any]:
        c = self.config
        target = (f"loss <= {c.target:g}" if c.target is not None
                  else f"loss <= {c.target_ratio:g} x the initial loss")
        return {
            "problems": {split: c.setting(split)._asdict() for split in ("train", "test")},
            "horizon": {split: c.horizon(split) for split in SPLITS},
            "data": c.data if "mlp" in (self.train_problem, self.test_problem) else None,
            "query": "the support set itself: the objective is the training loss (Andrychowicz et al. 2016)",
            "quadratic_spectrum": "cond(W^T W) = condition: W's singular values log-spaced, 1 to sqrt(cond)",
            "steps_to_target": f"first step with {target}; T + 1 = not reached",
            "leaderboard_note": c.distribution_note(),
        }


def data_term(problem: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """0.5 * sum of squares (quadratic), mean BCE-with-logits (logistic), mean cross-entropy (mlp with
    class labels) or mean squared error (mlp with real targets); written out so torch.func applies."""
    if problem == "quadratic":
        r = out - y
        return 0.5 * (r * r).sum()
    if problem == "logistic":
        # log(1 + e^l) - y l, with softplus's overflow-safe form for large logits.
        return (F.softplus(out) - y * out).mean()
    if not y.is_floating_point():
        log_p = out - torch.logsumexp(out, dim=-1, keepdim=True)
        return -torch.gather(log_p, -1, y.unsqueeze(-1)).mean()
    r = out - y
    return (r * r).mean()
