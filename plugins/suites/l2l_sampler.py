"""learn2learn's TaskDataset (Arnold, Mahajan, Datta, Bunner & Zarkias 2020, "learn2learn: A Library for
Meta-Learning Research", arXiv:2008.12284) as an alternative episode sampler for the image suites.

A helper module the suites import, not a plugin. `TaskDatasetSampler` takes a suite's class list (uint8
images and, per split, the images and quarter turns of every class) and draws episodes with
`TaskDataset(MetaDataset(...), [NWays, KShots(shots + query), LoadData, RemapLabels, ConsecutiveLabels])`,
returning the same `TaskBatch` layout as the suites' own vectorised samplers.
learn2learn draws with Python's global `random` module; each `sample` call reseeds it from the harness's
torch generator and restores it afterwards, so episodes are a pure function of that generator.
"""

from __future__ import annotations

import importlib.util
import itertools
import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from harness import HarnessError, TaskBatch, UsageError
from metaharness_plugins._learn2learn import import_learn2learn

SAMPLERS = ("native", "learn2learn")
INSTALL_HINT = "make learn2learn (or python scripts/install_learn2learn.py): learn2learn 0.2.0 from its sdist"


def check_sampler(sampler: object) -> None:
    """For a suite config's `__post_init__`: a ValueError unless `sampler` is one of SAMPLERS."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")


def missing_learn2learn() -> str:
    """'' when learn2learn can be imported here, else why not and how to install it (cheap: no import)."""
    if importlib.util.find_spec("learn2learn") is None:
        return f"sampler 'learn2learn' needs the learn2learn package, not installed here; run {INSTALL_HINT}"
    return ""


def _positive(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class ClassImages(Dataset):
    """One split's classes as a flat labelled dataset, the form learn2learn's MetaDataset wraps.

    `rows[c]` are the rows of `images` (uint8 [N, H, W] or [N, C, H, W]) holding class c's images, and
    `turns[c]` its quarter turns: item i, counted class by class, is (image, c) with the image rotated by
    turns * 90 degrees counter-clockwise, as `torch.rot90` and the suites' native samplers turn them.
    Images are read from `images` at access time, so a suite may fill rows lazily before sampling them.
    """

    def __init__(self, images: torch.Tensor, rows: Sequence[Sequence[int]], turns: Sequence[int]) -> None:
        self.images = images
        # Python ints: items are read one at a time in learn2learn's loop, where tensor indexing costs more.
        self.rows = [int(r) for class_rows in rows for r in class_rows]
        self.labels = [label for label, class_rows in enumerate(rows) for _ in class_rows]
        self.turns = [int(k) for k in turns]
        self.sizes = [len(class_rows) for class_rows in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        label = self.labels[index]
        image, turns = self.images[self.rows[index]], self.turns[label]
        return (torch.rot90(image, turns, dims=(-2, -1)) if turns else image), label

    def labels_to_indices(self) -> dict[int, list[int]]:
        """Class -> its item indices, so MetaDataset need not load every item to find the labels."""
        starts = [0, *itertools.accumulate(self.sizes)]
        return {label: list(range(starts[label], starts[label + 1])) for label in range(len(self.sizes))}


def _check_uint8(images: object, layout: str, dims: tuple[int, ...]) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() not in dims:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else images
        raise ValueError(f"images must be a uint8 tensor {layout}, got {got}")


def _check_vectors(split: str, names: str, *vectors: torch.Tensor) -> None:
    shape = vectors[0].shape
    if any(v.dim() != 1 or v.shape != shape or v.dtype.is_floating_point for v in vectors):
        raise ValueError(f"split {split!r}: {names} must be integer tensors of one length, got "
                         f"{' and '.join(str(tuple(v.shape)) for v in vectors)}")


class TaskDatasetSampler:
    """N-way K-shot episodes of a suite's classes, drawn by learn2learn's TaskDataset.

    Built from the split's classes as `ClassImages`, or from a suite's own layout by `from_characters`
    (Omniglot, glyphs) or `from_class_slices` (the learn2learn-format image sets). `sample` returns what
    the suites' native `sample` returns: support_x [n, ways*shots, C, H, W] float32 in [0, 1] (C = 1 for
    [N, H, W] images), labels int64 0..ways-1 class-major (all shots of label 0 first), query_x likewise
    with `query` images per class.
    """

    def __init__(self, splits: Mapping[str, ClassImages], ways: int, shots: int, query: int) -> None:
        for name, value in (("ways", ways), ("shots", shots), ("query", query)):
            _positive(name, value)
        if not splits:
            raise ValueError("the sampler needs at least one split of classes")
        per_class = shots + query
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

    @classmethod
    def from_characters(
        cls,
        images: torch.Tensor,
        classes: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
        ways: int,
        shots: int,
        query: int,
    ) -> TaskDatasetSampler:
        """`images`: uint8 [characters, drawings, H, W]; `classes[split]`: (character index of each class,
        its quarter turns 0-3), as `OmniglotSuite.classes` holds them."""
        _check_uint8(images, "[characters, drawings, H, W]", (4,))
        characters, drawings = int(images.shape[0]), int(images.shape[1])
        flat = images.flatten(0, 1)  # a view: rows a suite fills later are seen
        splits = {}
        for split, (chars, turns) in classes.items():
            _check_vectors(split, "characters and turns", chars, turns)
            if len(chars) and (int(chars.min()) < 0 or int(chars.max()) >= characters):
                raise ValueError(f"split {split!r}: character indices must lie in 0..{characters - 1}")
            if len(turns) and (int(turns.min()) < 0 or int(turns.max()) > 3):
                raise ValueError(f"split {split!r}: quarter turns must lie in 0..3")
            rows = [range(c * drawings, (c + 1) * drawings) for c in chars.tolist()]
            splits[split] = ClassImages(flat, rows, turns.tolist())
        return cls(splits, ways, shots, query)

    @classmethod
    def from_class_slices(
        cls,
        splits: Mapping[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        ways: int,
        shots: int,
        query: int,
    ) -> TaskDatasetSampler:
        """`splits[split]`: (images uint8 [N, C, H, W] grouped by class, offsets, counts): class c holds
        images[offsets[c] : offsets[c] + counts[c]], as the few-shot image suites keep their splits."""
        items = {}
        for split, (images, offsets, counts) in splits.items():
            _check_uint8(images, "[N, C, H, W] or [N, H, W]", (3, 4))
            _check_vectors(split, "offsets and counts", offsets, counts)
            if len(offsets) and (int(offsets.min()) < 0 or int(counts.min()) < 0
                                 or int((offsets + counts).max()) > len(images)):
                raise ValueError(f"split {split!r}: every class's slice offsets[c] : offsets[c] + counts[c] "
                                 f"must lie in its {len(images)} images")
            rows = [range(o, o + n) for o, n in zip(offsets.tolist(), counts.tolist())]
            items[split] = ClassImages(images, rows, [0] * len(rows))
        return cls(items, ways, shots, query)

    def sample(self, n_tasks: int, generator: torch.Generator, split: str) -> TaskBatch:
        """`n_tasks` episodes of `split`; a pure function of the generator's state, which it advances."""
        if split not in self.tasksets:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(self.tasksets)}")
        _positive("n_tasks", n_tasks)
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        state = random.getstate()
        try:
            random.seed(seed)
            episodes = [self.tasksets[split].sample() for _ in range(n_tasks)]
        finally:
            # The global `random` state is everyone's (the runner seeds it): leave it as it was. This also
            # makes the sampler unsafe to call from several threads at once.
            random.setstate(state)
        per_class = self.shots + self.query
        expected = torch.arange(self.ways).repeat_interleave(per_class)
        x = []
        for images, labels in episodes:
            # ConsecutiveLabels groups classes by their original label, so the new labels come in random
            # order; a stable sort by new label gives the class-major layout and keeps KShots' order inside.
            order = torch.argsort(labels, stable=True)
            if not torch.equal(labels[order], expected):
                raise HarnessError(f"learn2learn {self.version} returned labels {labels.tolist()}; expected "
                                   f"{per_class} images of each of {self.ways} labels 0..{self.ways - 1}")
            x.append(images[order])
        shape = x[0].shape[1:] if x[0].dim() == 4 else (1, *x[0].shape[1:])  # [C, H, W] of one image
        batch = torch.stack(x).view(n_tasks, self.ways, per_class, *shape)  # uint8

        def floats(part: torch.Tensor, count: int) -> torch.Tensor:
            # Split while still uint8, then convert: one float32 copy of the output instead of two.
            return part.reshape(n_tasks, self.ways * count, *shape).to(torch.float32).div_(255.0)

        labels = torch.arange(self.ways)
        return TaskBatch(
            support_x=floats(batch[:, :, : self.shots], self.shots),
            support_y=labels.repeat_interleave(self.shots).expand(n_tasks, -1).clone(),
            query_x=floats(batch[:, :, self.shots :], self.query),
            query_y=labels.repeat_interleave(self.query).expand(n_tasks, -1).clone(),
        )

    def describe(self) -> dict[str, object]:
        """What a record says about the sampler."""
        return {
            "name": "learn2learn",
            "learn2learn": self.version,
            "task_transforms": [f"NWays({self.ways})", f"KShots({self.shots + self.query})", "LoadData",
                                "RemapLabels", "ConsecutiveLabels"],
            "random": "Python's random, reseeded from the harness generator at every sample call",
        }
