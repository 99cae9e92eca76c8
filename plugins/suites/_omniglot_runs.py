"""The Omniglot one-shot runs suite itself (the `omniglot_runs` plugin registers it; imported when a cell
builds it)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import torch

from harness import TaskBatch, UsageError
from harness.storage import cache_folder
from metaharness_plugins.fewshot.omniglot_archives import decode_png, load_characters
from metaharness_plugins.fewshot.omniglot_runs_files import (
    LABELS_FILE,
    WAYS,
    find_archives,
    find_runs_dir,
    read_runs,
)
from metaharness_plugins.fewshot.pool import ClassPool
from metaharness_plugins.fewshot.suite import FewShotSuite


def background_splits(
    alphabets: Sequence[str], val_alphabets: Sequence[str] = ()
) -> dict[str, tuple[str, ...]]:
    """Meta-training and validation alphabets of the background archives: `val_alphabets` when given, else
    those at sorted positions i % 5 == 4 (a pure function of the set of names). Every alphabet not held out
    meta-trains, since the runs are the test set. Small set 1 alone gives val = Latin (26 characters); both
    small sets, val = Korean (40); the full background set, 6 of its 30 alphabets."""
    names = sorted(set(alphabets))
    if val_alphabets:
        unknown = sorted(set(val_alphabets) - set(names))
        if unknown:
            raise UsageError(f"val_alphabets names {', '.join(unknown)}, not in the archives; they hold "
                             f"{', '.join(names)}")
        held_out = set(val_alphabets)
    else:
        held_out = {name for i, name in enumerate(names) if i % 5 == 4}
    if held_out == set(names):
        raise UsageError(f"val_alphabets holds every alphabet of the archives ({', '.join(names)}); "
                         "leave some for meta-training")
    return {"train": tuple(n for n in names if n not in held_out),
            "val": tuple(n for n in names if n in held_out)}


class OmniglotRunsSuite(FewShotSuite):
    """Meta-train on background alphabets, test on Lake et al.'s one-shot runs; scored by error rate."""

    metric_name = "error_rate"
    metric_label = "error rate"
    higher_is_better = False
    ways = WAYS  # every episode is 20-way 1-shot, as every run is
    shots = 1

    def __init__(self, config: Any) -> None:
        """`config`: an `OmniglotRunsConfig` (the `omniglot_runs` plugin's)."""
        super().__init__(config)
        cfg = self.config
        self.runs_dir = find_runs_dir(cfg)
        self.runs = read_runs(self.runs_dir)  # every layout error before any decoding or training
        root = find_archives(cfg)
        cache_dir = cache_folder(cfg.cache_dir, "omniglot")
        self.data = load_characters([root / a for a in cfg.archives], cfg.image_size, cache_dir)
        self.alphabets = background_splits([a for a, _ in self.data.characters], cfg.val_alphabets)
        drawings = self.data.images.shape[1]
        if 1 + cfg.query > drawings:
            raise UsageError(f"1 shot + query = 1 + {cfg.query} images per class, but each Omniglot "
                             f"character has {drawings} drawings")
        # A class is (character, quarter turns); rotated copies are classes of the train split only.
        self.classes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for split, names in self.alphabets.items():
            chars = torch.tensor([i for i, (a, _) in enumerate(self.data.characters) if a in names],
                                 dtype=torch.int64)
            turns = 4 if cfg.rotations and split == "train" else 1
            self.classes[split] = (chars.repeat(turns), torch.arange(turns).repeat_interleave(len(chars)))
            if len(chars) * turns < WAYS:
                raise UsageError(f"{WAYS}-way episodes need {WAYS} classes, but the {split} split "
                                 f"(alphabets: {', '.join(names) or 'none'}) has {len(chars) * turns}; "
                                 "choose held-out alphabets with the option val_alphabets")
        self.set_pools({split: ClassPool.of_characters(self.data.images, *self.classes[split])
                        for split in self.alphabets}, "Omniglot background")
        self.run_support, self.run_query = self._decode_runs()  # uint8 [runs, 20, H, W], 255 = ink
        self.run_labels = torch.tensor([run.labels for run in self.runs], dtype=torch.int64)
        self._check_unseen()

    def _decode_runs(self) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.config.image_size
        out = torch.empty(2, len(self.runs), WAYS, size, size, dtype=torch.uint8)
        for r, run in enumerate(self.runs):
            for part, paths in enumerate((run.classes, run.items)):
                for i, path in enumerate(paths):
                    try:
                        out[part, r, i] = decode_png(path.read_bytes(), size)
                    except Exception as exc:  # PIL raises several types for a damaged file
                        raise UsageError(f"cannot decode {path}: {type(exc).__name__}: {exc}") from exc
        return out[0], out[1]

    def _check_unseen(self) -> None:
        """Refuse runs made of drawings the meta-training archives hold: the test would measure memory.

        The authors' runs come from the evaluation set, so with the background archives nothing is shared;
        a drawing found in both decodes to the same pixels, which `unique` detects exactly."""
        size = self.config.image_size
        archive = self.data.images.reshape(-1, size * size)
        runs = torch.stack([self.run_support, self.run_query], dim=2).reshape(-1, size * size)
        _, inverse = torch.unique(torch.cat([archive, runs]), dim=0, return_inverse=True)
        shared = torch.isin(inverse[len(archive):], inverse[: len(archive)]).view(len(self.runs), -1)
        if bool(shared.any()):
            hits = shared.any(dim=1).tolist()
            names = [run.folder.name for run, hit in zip(self.runs, hits, strict=True) if hit]
            where = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
            raise UsageError(f"{int(shared.sum())} of the {shared.numel()} images of the runs in "
                             f"{self.runs_dir} (in {where}) are drawings in the meta-training archives "
                             f"{', '.join(self.config.archives)}; the runs must come from other alphabets "
                             "(the authors' from images_evaluation)")

    def _episodes(self, runs: torch.Tensor) -> TaskBatch:
        """The runs at indices `runs` as episodes: the 20 training images as support (label k for
        class{k+1}.png), the 20 test images in item order as queries, labelled from class_labels.txt."""
        size, n = self.config.image_size, len(runs)
        return TaskBatch(
            support_x=self.run_support[runs].to(torch.float32).div_(255.0).view(n, WAYS, 1, size, size),
            support_y=torch.arange(WAYS).expand(n, -1).clone(),
            query_x=self.run_query[runs].to(torch.float32).div_(255.0).view(n, WAYS, 1, size, size),
            query_y=self.run_labels[runs].clone(),
        )

    def fixed_episodes(self, split: str) -> TaskBatch | None:
        """The test split is every run, in order (run01 first); train and val are sampled."""
        self.check_request(1, split)
        return self._episodes(torch.arange(len(self.runs))) if split == "test" else None

    def sample(self, n_tasks: int, generator: torch.Generator, split: str) -> TaskBatch:
        """`n_tasks` 20-way 1-shot episodes: support_x [n, 20, 1, H, W] float32 in [0, 1] (ink = 1), labels
        0..19 in order; query_x [n, 20 * query, 1, H, W] class-major. "test" draws from the runs (each once
        per pass over them, in random order), so its query set is a run's 20 test images."""
        self.check_request(n_tasks, split)
        if split == "test":
            passes = math.ceil(n_tasks / len(self.runs))
            order = torch.cat([torch.randperm(len(self.runs), generator=generator) for _ in range(passes)])
            return self._episodes(order[:n_tasks])
        return super().sample(n_tasks, generator, split)

    def metric(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Error rate: the fraction of query images whose highest logit is not the true label (the
        authors' measure, averaged over runs by the harness)."""
        return (prediction.argmax(dim=-1) != target).to(torch.float32).mean()

    def describe(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        for run in self.runs:  # the runs' exact bytes, so a record says which runs it was scored on
            for path in (*run.classes, *run.items, run.folder / LABELS_FILE):
                digest.update(f"{path.relative_to(self.runs_dir).as_posix()}\0".encode())
                digest.update(path.read_bytes())
        splits: dict[str, Any] = {}
        for split, names in self.alphabets.items():
            characters = int(self.classes[split][0].unique().numel())
            splits[split] = {"alphabets": list(names), "characters": characters,
                             "classes": len(self.classes[split][0])}
        splits["test"] = {"runs": len(self.runs), "runs_dir": str(self.runs_dir),
                          "runs_sha256": digest.hexdigest()}
        import PIL

        return {
            "archives": [{"path": p, "sha256": h} for p, h in self.data.archives],
            "splits": splits,
            "cache_file": str(self.data.cache_file),
            "pillow": PIL.__version__,
        }
