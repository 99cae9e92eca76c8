"""Omniglot one-shot classification runs: the evaluation of Lake, Salakhutdinov & Tenenbaum (2015),
"Human-level concept learning through probabilistic program induction", Science, applied to meta-learners
trained on the Omniglot background set.

The authors' test (folder `all_runs` of brendenlake/omniglot, python/one-shot-classification/) is twenty
runs, each a 20-way 1-shot problem within one alphabet: `runNN/training/class01.png ... class20.png` hold one
drawing of each of 20 characters, `runNN/test/item01.png ... item20.png` another person's drawing of each in
shuffled order, and `runNN/class_labels.txt` pairs them, one line per test image:
`runNN/test/itemJJ.png runNN/training/classKK.png` (paths relative to the folder holding the runs). The
score is the error rate averaged over the runs (the paper: people 4.5%, Bayesian program learning 3.3%; the
authors' modified-Hausdorff-distance demo 38.8%).

Here the test split is exactly those runs, declared as fixed episodes (`TaskSuite.fixed_episodes`): one
episode per run, the training images as the support set (classKK.png has label KK - 1) and the 20 test
images as the query set (item01.png first). Meta-training ("train") and validation ("val") draw 20-way
1-shot episodes from disjoint alphabets of the background archives, decoded and cached by the omniglot
suite's archive reader (`fewshot.omniglot_archives`); run images are decoded the same way. The model is the
few-shot base's conv4.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness import HarnessError, TaskSuiteSpec, forward_attributes, hookimpl
from metaharness_plugins.fewshot.config import ImageConfig
from metaharness_plugins.fewshot.omniglot_download import unsafe_member
from metaharness_plugins.fewshot.omniglot_runs_files import find_archives, find_runs_dir, read_runs


@dataclass(frozen=True)
class OmniglotRunsConfig(ImageConfig):
    """`runs_dir` is the folder holding run01 ... (None: `all_runs` beside the archives, that is
    `<data_root>/all_runs`, `$HARNESS_DATA/omniglot/all_runs` or `$HARNESS_DATA/all_runs`). Meta-training
    and validation use `archives` under `data_root` (as the omniglot suite: None means `$HARNESS_DATA`):
    `val_alphabets` are held out for validation (empty: every fifth alphabet in sorted order, see
    `background_splits`); `query` is query images per class in those episodes (a run's query set is its 20
    test images); `rotations` adds the 90/180/270-degree turns of training characters as new classes."""

    runs_dir: str | None = None
    archives: tuple[str, ...] = ("images_background_small1.zip", "images_background_small2.zip")
    val_alphabets: tuple[str, ...] = ()
    data_root: str | None = None
    cache_dir: str | None = None
    rotations: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        valid = (isinstance(a, str) and a and "/" not in a and not unsafe_member(a) for a in self.archives)
        if not self.archives or not all(valid):
            raise ValueError(f"archives must be a non-empty list of zip file names in the data folder, got "
                             f"{self.archives!r}")
        if self.runs_dir is not None and (not isinstance(self.runs_dir, str) or not self.runs_dir):
            raise ValueError(f"runs_dir must be a folder path, got {self.runs_dir!r}")
        if not all(isinstance(a, str) and a for a in self.val_alphabets):
            raise ValueError(f"val_alphabets must be alphabet names, got {self.val_alphabets!r}")


def check_runs(cfg: OmniglotRunsConfig) -> str:
    """'' when the runs and the archives are where `cfg` says and the runs are well formed, else why not
    (the grid calls this before any cell runs; it reads the label files, no image)."""
    reasons = []
    for check in (lambda: read_runs(find_runs_dir(cfg)), lambda: find_archives(cfg)):
        try:
            check()
        except HarnessError as exc:  # a usage error, or a download of an official archive that failed
            reasons.append(str(exc))
    return "; ".join(reasons)


@hookimpl
def harness_register_task_suites() -> list[TaskSuiteSpec]:
    return [
        TaskSuiteSpec(
            name="omniglot-runs",
            factory="metaharness_plugins.suites._omniglot_runs:OmniglotRunsSuite",
            config=OmniglotRunsConfig,
            task_kind="classification",
            description="Lake et al.'s 20-way 1-shot Omniglot runs (runs_dir), after meta-training on "
                        "background alphabets; error rate",
            paper="Lake, Salakhutdinov & Tenenbaum 2015 (one-shot classification runs)",
            requires=("PIL",),
            check=check_runs,
            # Validation episodes are drawn alike whatever the model or where the files live (the test
            # episodes are the runs themselves, whatever the seed).
            episode_neutral=("model", "data_root", "cache_dir"),
        )
    ]


# The implementation lives in _omniglot_runs.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.suites._omniglot_runs")
