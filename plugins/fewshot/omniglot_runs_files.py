"""Lake et al.'s one-shot classification runs on disk (brendenlake/omniglot, python/one-shot-classification/
all_runs): finding the folder, reading and checking each run's files and labels. A helper module of the
omniglot-runs suite (the plugin checks runs with it before any cell; the suite reads them with it)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import UsageError
from harness.storage import DATA_ENV, data_folders
from metaharness_plugins.fewshot.omniglot_archives import find_data_root

WAYS = 20  # every run is a 20-way 1-shot problem (Lake et al. 2015, one-shot classification)

RUNS_FOLDER = "all_runs"  # the authors' name for the folder of runs, the default under the data root

LABELS_FILE = "class_labels.txt"

LAYOUT = ("run01 ... run20 (or however many runs), each runNN/ holding training/class01.png ... class20.png, "
          f"test/item01.png ... item20.png and {LABELS_FILE}")

RUN_NAME = re.compile(r"run\d+")

ITEM_FIELD = re.compile(r"(run\d+)/test/item(\d{2})\.png")

CLASS_FIELD = re.compile(r"(run\d+)/training/class(\d{2})\.png")

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

def find_runs_dir(cfg: Any) -> Path:
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
                         f"{LAYOUT} (the authors' all_runs.zip, extracted, or runs built from an archive's "
                         f"alphabets with `python -m metaharness_plugins.fewshot.omniglot_runs_build`); {tried}")
    return found

def find_archives(cfg: Any) -> Path:
    """The folder holding the background archives of `cfg`, found (official ones fetched when missing) as
    the omniglot suite finds its own."""
    return find_data_root(cfg.archives, cfg.data_root)

