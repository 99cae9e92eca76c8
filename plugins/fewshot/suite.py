"""The few-shot classification suite base: a suite that samples its class pools natively or through
learn2learn's TaskDataset, builds conv4, and scores accuracy.

An image suite subclasses `fewshot.config.ImageConfig` (or `FewShotConfig`) for its own options and
`FewShotSuite` for how it loads its pools and describes itself; everything about episodes lives here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from harness import TaskBatch, TaskSuite, UsageError
from harness.specs import SPLITS
from metaharness_plugins.backbones import conv4
from metaharness_plugins.fewshot.pool import ClassPool
from metaharness_plugins.fewshot.taskdataset import TaskDatasetSampler


def pool_problem(ways: int, shots: int, query: int, pools: Mapping[str, ClassPool], title: str,
                 name: Callable[[str, int], str] | None = None) -> str:
    """'' when every pool can give `ways`-way episodes of `shots` + `query` images per class, else what
    was asked and what the split has. `name(split, c)` names class c in the message (default: its index)."""
    per_class = shots + query
    for split, pool in pools.items():
        if pool.num_classes < ways:
            return (f"{ways}-way episodes need {ways} classes, but the {title} {split} split has "
                    f"{pool.num_classes}")
        smallest, count = pool.smallest_class()
        if count < per_class:
            label = name(split, smallest) if name is not None else str(smallest)
            return (f"shots + query = {shots} + {query} = {per_class} images per class, but class "
                    f"{label} of the {title} {split} split has {count}")
    return ""


class FewShotSuite(TaskSuite):
    """N-way K-shot classification episodes of per-split class pools, scored by query accuracy.

    A subclass loads its data and calls `set_pools` in `__init__`; CHANNELS and FILTERS size its conv4.
    """

    metric_name = "accuracy"
    higher_is_better = True
    CHANNELS: ClassVar[int] = 1
    FILTERS: ClassVar[int] = 64  # conv4: 64 filters in every layer (MAML section 5.2, ProtoNets section 3.2)

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.pools: dict[str, ClassPool] = {}
        self._l2l: TaskDatasetSampler | None = None

    @property
    def ways(self) -> int:
        return int(self.config.ways)

    @property
    def shots(self) -> int:
        return int(self.config.shots)

    def set_pools(self, pools: Mapping[str, ClassPool], title: str,
                  name: Callable[[str, int], str] | None = None) -> None:
        """Sample from `pools` (one per split); a UsageError when they cannot give the episodes. `title`
        and `name(split, c)` name the data and a class in that error."""
        self.pools = dict(pools)
        problem = pool_problem(self.ways, self.shots, self.config.query, self.pools, title, name)
        if problem:
            raise UsageError(problem)
        if getattr(self.config, "sampler", "native") == "learn2learn":
            self._l2l = TaskDatasetSampler(self.pools, self.ways, self.shots, self.config.query)

    def check_request(self, n_tasks: object, split: str) -> None:
        """ValueError for an unknown split or a bad number of episodes."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        if not isinstance(n_tasks, int) or isinstance(n_tasks, bool) or n_tasks < 1:
            raise ValueError(f"n_tasks must be a positive integer, got {n_tasks!r}")

    def sample(self, n_tasks: int, generator: torch.Generator, split: str) -> TaskBatch:
        """`n_tasks` episodes: support_x [n, ways*shots, C, H, W] float32 in [0, 1], labels int64 in
        0..ways-1, class-major (all shots of label 0 first); query_x likewise with `query` per class."""
        self.check_request(n_tasks, split)
        if self._l2l is not None:
            return self._l2l.sample(n_tasks, generator, split)
        return self.pools[split].sample(n_tasks, self.ways, self.shots, self.config.query, generator)

    def build_model(self) -> nn.Module:
        """conv4 (4 x [3x3 conv, batch norm with batch statistics, ReLU, 2x2 max-pool], linear to `ways`)
        or conv4-nopool (stride-2 convolutions, global average pool: MAML's no-max-pool variant)."""
        cfg = self.config
        return conv4(self.CHANNELS, self.FILTERS, self.ways, cfg.image_size, pool=cfg.model != "conv4-nopool")

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the logits, the papers' classification loss."""
        return F.cross_entropy(prediction, target)

    def metric(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Fraction of query images whose highest logit is the true label."""
        return (prediction.argmax(dim=-1) == target).to(torch.float32).mean()

    def sampler_description(self) -> dict[str, Any]:
        """What a record says about the sampler."""
        return self._l2l.describe() if self._l2l is not None else {"name": "native"}
