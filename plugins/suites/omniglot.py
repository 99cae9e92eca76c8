"""Few-shot classification on real Omniglot (Lake, Salakhutdinov & Tenenbaum 2015, "Human-level concept
learning through probabilistic program induction", Science) with the N-way K-shot episodes, conv4 and
fully connected models of Finn, Abbeel & Levine 2017 (MAML, ICML) and Snell, Swersky & Zemel 2017
(ProtoNets, NeurIPS).

The suite reads the authors' zip archives in place (never extracted), decodes every drawing once and
caches it (`fewshot.omniglot_archives`), and samples episodes from the shared few-shot base
(`fewshot.suite`). Two protocols:

- "alphabet" meta-trains, validates and tests on disjoint alphabets (see `alphabet_splits`), which works
  with the two small background sets alone;
- "standard" is the split most papers use (Vinyals et al. 2016; Santoro et al. 2016; MAML section 5.2):
  all 1623 characters of images_background.zip and images_evaluation.zip, 1200 for meta-training (of
  which the last 100 validate, as MAML's code holds out 100) with rotations by 90/180/270 degrees as new
  classes, and the other 423 for meta-test (see `standard_splits` for the fixed character order).
  The two full archives are downloaded with their published md5 when absent (`omniglot_download`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from harness import HarnessError, TaskSuiteSpec, forward_attributes, hookimpl
from metaharness_plugins.fewshot.config import FewShotConfig, positive_int, sampler_problem
from metaharness_plugins.fewshot.omniglot_archives import (
    FULL_ARCHIVES,
    SMALL_ARCHIVES,
    episode_problem,
    find_data_root,
    split_characters,
    survey_archives,
)
from metaharness_plugins.fewshot.omniglot_download import (
    DOWNLOAD_MODES,
    URL_SCHEMES,
    unsafe_member,
)

PROTOCOLS = ("alphabet", "standard")


@dataclass(frozen=True)
class OmniglotConfig(FewShotConfig):
    """Episode sizes, data and model. `query` is query images per class.

    `protocol` "alphabet" or "standard" (module docstring). `archives` None means the protocol's: the
    two small background sets, or images_background.zip and images_evaluation.zip. `rotations` adds
    the rotations by 90/180/270 degrees of every meta-training character as new classes (the papers'
    augmentation, train split only); None means on for "standard", off for "alphabet".
    `train_characters` / `val_characters` size the "standard" split: the first `train_characters`
    characters are for meta-training, the last `val_characters` of them validate, the rest test.
    `data_root` is the folder holding `archives` (None: `$HARNESS_DATA/omniglot`, else `$HARNESS_DATA`);
    `cache_dir` None means `$HARNESS_CACHE/omniglot`, else `~/.cache/metaharness/omniglot`.
    `download` "missing" fetches an absent official archive from `base_url` (None: `$HARNESS_OMNIGLOT_URL`,
    else the authors' repository), "replace" also fetches over one whose md5 is wrong, "never" does not
    go online; `verify_md5` checks official archives against their published md5 (false only for your
    own archives under the official names). `ways`, `shots`, `sampler`: see `FewShotConfig`; `model`
    "mlp" is MAML's fully connected network.
    """

    protocol: str = "alphabet"
    archives: tuple[str, ...] | None = None
    data_root: str | None = None
    cache_dir: str | None = None
    rotations: bool | None = None
    train_characters: int = 1200
    val_characters: int = 100
    download: str = "missing"
    base_url: str | None = None
    verify_md5: bool = True
    MODELS: ClassVar[tuple[str, ...]] = ("conv4", "conv4-nopool", "mlp")

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_int(self, "train_characters", "val_characters")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.val_characters >= self.train_characters:
            raise ValueError(f"val_characters ({self.val_characters}) must be fewer than train_characters "
                             f"({self.train_characters}): validation characters are held out of those")
        if self.protocol == "alphabet" and (self.train_characters, self.val_characters) != (1200, 100):
            raise ValueError("train_characters and val_characters size the 'standard' protocol's split; "
                             "protocol 'alphabet' splits by alphabet (set protocol = 'standard' or leave "
                             "them out)")
        if self.download not in DOWNLOAD_MODES:
            raise ValueError(f"download must be one of {', '.join(DOWNLOAD_MODES)}, got {self.download!r}")
        if self.base_url is not None and self.base_url.split("://", 1)[0] not in URL_SCHEMES:
            raise ValueError(f"base_url must be an {'/'.join(URL_SCHEMES)} URL of the folder holding the "
                             f"archives, got {self.base_url!r}")
        # Protocol defaults are written into the frozen config, so the record holds what was used.
        if self.archives is None:
            archives = FULL_ARCHIVES if self.protocol == "standard" else SMALL_ARCHIVES
            object.__setattr__(self, "archives", archives)
        if self.rotations is None:
            object.__setattr__(self, "rotations", self.protocol == "standard")
        if not self.archives or not all(isinstance(a, str) and a for a in self.archives):
            raise ValueError(f"archives must be a non-empty list of zip file names, got {self.archives!r}")
        for name in self.archives:
            if unsafe_member(name) or "/" in name:
                raise ValueError(f"archives must be file names inside the data folder, got {name!r}")


def check_data(cfg: OmniglotConfig) -> str:
    """'' when `cfg` can run here, else why not. The grid calls this before running anything, so the
    download (when one is needed) happens here, and so do the checks of the sizes against the data."""
    if sampler_problem(cfg):
        return sampler_problem(cfg)
    try:
        root = find_data_root(cfg.archives, cfg.data_root, cfg.download, cfg.base_url, cfg.verify_md5)
        paths = [root / a for a in cfg.archives]
        survey = survey_archives(paths)
        return episode_problem(cfg, split_characters(cfg, survey), min(n for _, n in survey.values()))
    except HarnessError as exc:
        return str(exc)


@hookimpl
def harness_register_task_suites() -> list[TaskSuiteSpec]:
    return [
        TaskSuiteSpec(
            name="omniglot",
            factory="metaharness_plugins.suites._omniglot:OmniglotSuite",
            config=OmniglotConfig,
            task_kind="classification",
            description="N-way K-shot Omniglot character classification (alphabet-disjoint splits of the "
                        "small sets, or the papers' 1200/423 split of the full archives); accuracy",
            paper=(
                "Lake, Salakhutdinov & Tenenbaum 2015 (data); Finn et al. 2017 / Snell et al. 2017 (protocol)"
            ),
            requires=("PIL",),
            check=check_data,
            # Model and data location/download policy do not change the episodes (same archives, same
            # sampling): leaving them out of the episode seed pairs conv4 and conv4-nopool cells.
            episode_neutral=("model", "data_root", "cache_dir", "download", "base_url", "verify_md5"),
        )
    ]


# The implementation lives in _omniglot.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.suites._omniglot")
