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

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import HarnessError, TaskSuiteSpec, UsageError, forward_attributes, hookimpl
from harness.storage import DATA_ENV, data_folders
from metaharness_plugins.fewshot.config import ImageConfig
from metaharness_plugins.fewshot.omniglot_archives import find_data_root
from metaharness_plugins.fewshot.omniglot_download import unsafe_member

WAYS = 20  # every run is a 20-way 1-shot problem (Lake et al. 2015, one-shot classification)


RUNS_FOLDER = "all_runs"  # the authors' name for the folder of runs, the default under the data root


LABELS_FILE = "class_labels.txt"


LAYOUT = ("run01 ... run20 (or however many runs), each runNN/ holding training/class01.png ... class20.png, "
          f"test/item01.png ... item20.png and {LABELS_FILE}")


RUN_NAME = re.compile(r"run\d+")


ITEM_FIELD = re.compile(r"(run\d+)/test/item(\d{2})\.png")


CLASS_FIELD = re.compile(r"(run\d+)/training/class(\d{2})\.png")


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


@dataclass(frozen=True)
class Run:
    """One run: its training images (class01.png first), its test images (item01.png first) and, for
    each test image, the 0-based index of its training image as class_labels.txt pairs them."""

    folder: Path
    classes: tuple[Path, ...]
    items: tuple[Path, ...]
    labels: tuple[int, ...]


def parse_class_labels(path: Path, run: str) -> tuple[int, ...]:
    """labels[j] = k - 1 where the line of test image item{j+1}.png names class{k}.png, from the
    class_labels.txt of run `run`; a UsageError naming path:line for anything else than 20 lines that
    pair every test image of the run with a different training image of the same run."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UsageError(f"{path} is missing; every run folder needs its {LABELS_FILE}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    form = f"'{run}/test/itemNN.png {run}/training/classNN.png' with NN in 01 ... {WAYS}"
    item_line: dict[int, int] = {}  # test image number -> line that pairs it
    class_line: dict[int, int] = {}  # training image number -> line that pairs it
    labels: dict[int, int] = {}
    for number, line in enumerate(lines, start=1):
        where = f"{path}:{number}"
        fields = line.split()
        item = ITEM_FIELD.fullmatch(fields[0]) if len(fields) == 2 else None
        cls = CLASS_FIELD.fullmatch(fields[1]) if len(fields) == 2 else None
        if item is None or cls is None:
            raise UsageError(f"{where}: expected {form}, got {line!r}")
        if item[1] != run or cls[1] != run:
            raise UsageError(f"{where}: pairs {fields[0]} with {fields[1]}; both must be in {run}, the run "
                             "this file belongs to")
        j, k = int(item[2]), int(cls[2])
        if not (1 <= j <= WAYS and 1 <= k <= WAYS):
            raise UsageError(f"{where}: expected {form}, got {line!r}")
        if j in item_line:
            raise UsageError(f"{where}: test image item{j:02d}.png is paired again (first on line "
                             f"{item_line[j]}); each test image has exactly one line")
        if k in class_line:
            raise UsageError(f"{where}: class{k:02d}.png is paired again (first on line {class_line[k]}); "
                             "every class is used exactly once")
        item_line[j], class_line[k], labels[j] = number, number, k - 1
    if len(labels) != WAYS:
        missing = [f"item{j:02d}.png" for j in range(1, WAYS + 1) if j not in labels]
        raise UsageError(f"{path}: {len(lines)} lines; a {WAYS}-way run needs {WAYS}, one per test image "
                         f"(no line for {', '.join(missing)})")
    return tuple(labels[j] for j in range(1, WAYS + 1))


def _read_run(folder: Path) -> Run:
    images = {}
    for sub, stem in (("training", "class"), ("test", "item")):
        where = folder / sub
        expected = [f"{stem}{i:02d}.png" for i in range(1, WAYS + 1)]
        missing = [name for name in expected if not (where / name).is_file()]
        if missing:
            raise UsageError(f"{where / missing[0]} is missing ({len(missing)} of {sub}/{stem}01.png ... "
                             f"{stem}{WAYS}.png missing); a run holds {WAYS} training and {WAYS} test images")
        extra = sorted(p.name for p in where.iterdir() if re.fullmatch(rf"{stem}\d+\.png", p.name))
        extra = [name for name in extra if name not in expected]
        if extra:
            raise UsageError(f"{where} holds {', '.join(extra)}; a run is {WAYS}-way: {stem}01.png ... "
                             f"{stem}{WAYS}.png")
        images[sub] = tuple(where / name for name in expected)
    labels = parse_class_labels(folder / LABELS_FILE, folder.name)
    return Run(folder, images["training"], images["test"], labels)


def read_runs(runs_dir: Path) -> tuple[Run, ...]:
    """Every run in `runs_dir`, in order, with its files and labels checked (nothing is decoded); a
    UsageError naming the folder, file or line at the first departure from the authors' layout."""
    if not runs_dir.is_dir():
        raise UsageError(f"runs_dir {runs_dir} is not a folder; expected the folder holding {LAYOUT}")
    names = sorted((p.name for p in runs_dir.iterdir() if p.is_dir() and RUN_NAME.fullmatch(p.name)),
                   key=lambda name: (int(name[3:]), name))
    if not names:
        raise UsageError(f"{runs_dir} holds no run folders; expected {LAYOUT}")
    if names != [f"run{i:02d}" for i in range(1, len(names) + 1)]:
        raise UsageError(f"the run folders in {runs_dir} must be numbered run01, run02, ... without gaps; "
                         f"found {', '.join(names)}")
    return tuple(_read_run(runs_dir / name) for name in names)


def find_runs_dir(cfg: OmniglotRunsConfig) -> Path:
    """The folder of runs `cfg` names, or the default beside the archives; a UsageError naming the option
    runs_dir and the expected layout when there is none."""
    if cfg.runs_dir is not None:
        return Path(cfg.runs_dir).expanduser()
    # Beside the archives: under data_root, else $HARNESS_DATA/omniglot or $HARNESS_DATA itself.
    candidates = [folder / RUNS_FOLDER for folder in data_folders(cfg.data_root, "omniglot")]
    found = next((c for c in candidates if c.is_dir()), None)
    if found is None:
        tried = (f"the default, {' or '.join(map(str, candidates))}, does not exist" if candidates else
                 f"the default, $HARNESS_DATA/omniglot/{RUNS_FOLDER}, needs ${DATA_ENV}")
        raise UsageError(f"no Omniglot one-shot runs: set the suite option runs_dir to the folder holding "
                         f"{LAYOUT} (the authors' all_runs.zip, extracted); {tried}")
    return found


def find_archives(cfg: OmniglotRunsConfig) -> Path:
    """The folder holding the background archives of `cfg`, found (official ones fetched when missing) as
    the omniglot suite finds its own."""
    return find_data_root(cfg.archives, cfg.data_root)


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
