"""learn2learn's TaskDataset (Arnold, Mahajan, Datta, Bunner & Zarkias 2020, "learn2learn: A Library for
Meta-Learning Research", arXiv:2008.12284) as an alternative episode sampler for the image suites.

A helper module the suites import, not a plugin. `TaskDatasetSampler` takes a suite's class pools (one
`ClassPool` per split) and draws episodes with
`TaskDataset(MetaDataset(...), [NWays, KShots(shots + query), LoadData, RemapLabels, ConsecutiveLabels])`,
returning the same `TaskBatch` layout as the native sampler (`ClassPool.sample`).
learn2learn draws with Python's global `random` module; each `sample` call reseeds it from the harness's
torch generator and restores it afterwards, so episodes are a pure function of that generator.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import Dataset

from harness import HarnessError, TaskBatch, UsageError
from metaharness_plugins._learn2learn import import_learn2learn
from metaharness_plugins.fewshot.config import INSTALL_HINT
from metaharness_plugins.fewshot.pool import ClassPool, episodes


def _positive(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class ClassImages(Dataset):
    """One split's classes as a flat labelled dataset, the form learn2learn's MetaDataset wraps.

    Item i, counted class by class, is (image, c). Images are read from the pool at access time, so rows
    a suite fills lazily are seen once filled.
    """

    def __init__(self, pool: ClassPool) -> None:
        self.images = pool.images
        rows = [range(o, o + n) for o, n in zip(pool.offsets.tolist(), pool.counts.tolist())]
        # Python ints: items are read one at a time in learn2learn's loop, where tensor indexing costs more.
        self.rows = [int(r) for class_rows in rows for r in class_rows]
        self.labels = [label for label, class_rows in enumerate(rows) for _ in class_rows]
        self.sizes = [len(class_rows) for class_rows in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[self.rows[index]], self.labels[index]

    def labels_to_indices(self) -> dict[int, list[int]]:
        """Class -> its item indices, so MetaDataset need not load every item to find the labels."""
        starts = [0, *itertools.accumulate(self.sizes)]
        return {label: list(range(starts[label], starts[label + 1])) for label in range(len(self.sizes))}


class TaskDatasetSampler:
    """N-way K-shot episodes of a suite's classes, drawn by learn2learn's TaskDataset.

    `sample` returns what the native `ClassPool.sample` returns: support_x [n, ways*shots, C, H, W]
    float32 in [0, 1], labels int64 0..ways-1 class-major (all shots of label 0 first), query_x likewise
    with `query` images per class.
    """

    def __init__(self, pools: Mapping[str, ClassPool], ways: int, shots: int, query: int) -> None:
        for name, value in (("ways", ways), ("shots", shots), ("query", query)):
            _positive(name, value)
        if not pools:
            raise ValueError("the sampler needs at least one split of classes")
        per_class = shots + query
        splits = {split: ClassImages(pool) for split, pool in pools.items()}
        for split, items in splits.items():
            if len(items.sizes) < ways:
                raise ValueError(f"{ways}-way episodes need {ways} classes, but split {split!r} has "
                                 f"{len(items.sizes)}")
            smallest = min(range(len(items.sizes)), key=items.sizes.__getitem__)
            if items.sizes[smallest] < per_class:
                raise ValueError(f"shots + query = {shots} + {query} = {per_class} images per class, but "
                                 f"class {smallest} of split {split!r} has {items.sizes[smallest]}")
        try:
            learn2learn = import_learn2learn()
            from learn2learn.data.transforms import ConsecutiveLabels, KShots, LoadData, NWays, RemapLabels
        except ImportError as exc:
            raise UsageError(f"sampler 'learn2learn' cannot import learn2learn ({exc}); "
                             f"run {INSTALL_HINT}") from exc
        self.ways, self.shots, self.query = ways, shots, query
        self.pools = dict(pools)
        self.version = str(learn2learn.__version__)
        self.tasksets: dict[str, Any] = {}
        for split, items in splits.items():
            meta = learn2learn.data.MetaDataset(items, labels_to_indices=items.labels_to_indices())
            # KShots keeps shots + query images of each class in random order, so the first `shots` of a
            # class are a uniformly random support set. RemapLabels gives the classes random labels
            # 0..ways-1 and ConsecutiveLabels groups each class's images (learn2learn's Omniglot recipe).
            transforms = [NWays(meta, ways), KShots(meta, per_class), LoadData(meta), RemapLabels(meta),
                          ConsecutiveLabels(meta)]
            # Taskset is TaskDataset's current name (learn2learn 0.2.0 warns that TaskDataset is deprecated).
            # num_tasks=-1: a fresh task at every draw rather than a fixed, cached set of task descriptions.
            self.tasksets[split] = learn2learn.data.Taskset(meta, transforms, num_tasks=-1)

    def sample(self, n_tasks: int, generator: torch.Generator, split: str) -> TaskBatch:
        """`n_tasks` episodes of `split`; a pure function of the generator's state, which it advances."""
        if split not in self.tasksets:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(self.tasksets)}")
        _positive("n_tasks", n_tasks)
        pool = self.pools[split]
        if pool.fill is not None:
            # TaskDataset indexes a materialised dataset: every class of the split, filled on first use.
            pool.fill(torch.arange(pool.num_classes))
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        state = random.getstate()
        try:
            random.seed(seed)
            drawn = [self.tasksets[split].sample() for _ in range(n_tasks)]
        finally:
            # The global `random` state is everyone's (the runner seeds it): leave it as it was. This also
            # makes the sampler unsafe to call from several threads at once.
            random.setstate(state)
        per_class = self.shots + self.query
        expected = torch.arange(self.ways).repeat_interleave(per_class)
        x = []
        for images, labels in drawn:
            # ConsecutiveLabels groups classes by their original label, so the new labels come in random
            # order; a stable sort by new label gives the class-major layout and keeps KShots' order inside.
            order = torch.argsort(labels, stable=True)
            if not torch.equal(labels[order], expected):
                raise HarnessError(f"learn2learn {self.version} returned labels {labels.tolist()}; expected "
                                   f"{per_class} images of each of {self.ways} labels 0..{self.ways - 1}")
            x.append(images[order])
        return episodes(torch.stack(x).view(n_tasks, self.ways, per_class, *x[0].shape[1:]), self.shots)

    def describe(self) -> dict[str, object]:
        """What a record says about the sampler."""
        return {
            "name": "learn2learn",
            "learn2learn": self.version,
            "task_transforms": [f"NWays({self.ways})", f"KShots({self.shots + self.query})", "LoadData",
                                "RemapLabels", "ConsecutiveLabels"],
            "random": "Python's random, reseeded from the harness generator at every sample call",
        }
