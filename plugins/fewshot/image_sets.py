"""The four learn2learn-format image benchmarks on disk (mini-ImageNet, tiered-ImageNet, CIFAR-FS, FC100):
which files each needs under the data root, where to get them, and finding that root. A helper module of
the fewshot_images suites (the plugin checks the files with it; the suites read them with it)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import UsageError
from harness.specs import SPLITS
from harness.storage import DATA_ENV, data_folders

MODES = {"train": "train", "val": "validation", "test": "test"}  # learn2learn's names of the splits

ZENODO = "https://zenodo.org/record/7978538/files/"  # learn2learn's mirror of every file below

@dataclass(frozen=True)
class ImageSet:
    """One dataset: its learn2learn class, where its files lie under the data root, where to get them."""

    name: str
    title: str
    loader: str  # class name in learn2learn.vision.datasets
    image_size: int  # the files' own image side
    classes: tuple[int, int, int]  # official classes of train / val / test
    files: Callable[[str], tuple[str, ...]]  # learn2learn mode -> files relative to the data root
    source: str

def _cifarfs_files(mode: str) -> tuple[str, ...]:
    return (f"cifarfs/processed/{'val' if mode == 'validation' else mode}",)

IMAGE_SETS = {s.name: s for s in (
    ImageSet("mini-imagenet", "mini-ImageNet", "MiniImagenet", 84, (64, 16, 20),
             lambda mode: (f"mini-imagenet-cache-{mode}.pkl",),
             f"the Ravi & Larochelle split pickled by learn2learn: {ZENODO}mini-imagenet-cache-<split>.pkl "
             "(Dropbox and Google Drive mirrors: learn2learn.vision.datasets.MiniImagenet)"),
    ImageSet("tiered-imagenet", "tiered-ImageNet", "TieredImagenet", 84, (351, 97, 160),
             lambda mode: tuple(f"tiered-imagenet/{'val' if mode == 'validation' else mode}_{kind}.pkl"
                                for kind in ("images_png", "labels")),
             f"Ren et al.'s files (github.com/renmengye/few-shot-ssl-public), mirrored by learn2learn as "
             f"{ZENODO}tiered-imagenet-<name>, saved as tiered-imagenet/<name> without the prefix"),
    ImageSet("cifar-fs", "CIFAR-FS", "CIFARFS", 32, (64, 16, 20), _cifarfs_files,
             f"{ZENODO}cifar100.zip (CIFAR-100 as PNG with Bertinetto et al.'s splits) unzipped into "
             "cifarfs/; learn2learn copies it into cifarfs/processed/ on first use"),
    ImageSet("fc100", "FC100", "FC100", 32, (60, 20, 20),
             lambda mode: (f"FC100_{'val' if mode == 'validation' else mode}.pickle",),
             f"MetaOptNet's pickles (github.com/kjunelee/MetaOptNet): {ZENODO}fc100.zip, unzipped into the "
             "data root"),
)}

CIFARFS_RAW = ("cifarfs/cifar100/data", *(f"cifarfs/cifar100/splits/bertinetto/{s}.txt" for s in SPLITS))

def _missing(data: ImageSet, root: Path) -> list[str]:
    """Files of `data` not under `root` ([] when all are there). CIFAR-FS counts as present when either
    learn2learn's processed splits or the unzipped cifar100.zip it processes them from are there."""
    wanted = [f for mode in MODES.values() for f in data.files(mode)]
    missing = [f for f in wanted if not (root / f).exists()]
    if data.name == "cifar-fs" and missing and all((root / f).exists() for f in CIFARFS_RAW):
        return []
    return missing

def find_data_root(cfg: Any) -> Path:
    """The folder holding every file of `cfg`'s dataset (a `FewShotImagesConfig`), or a UsageError naming the files, the folders
    tried and where to get the files."""
    data = IMAGE_SETS[cfg.dataset]
    expected = [f for mode in MODES.values() for f in data.files(mode)]
    wanted = ", ".join(expected)
    if data.name == "cifar-fs":
        wanted += " (or the unzipped cifar100.zip: " + ", ".join(CIFARFS_RAW) + ")"
    candidates = data_folders(cfg.data_root, data.name)
    if not candidates:
        raise UsageError(f"no {data.title} data directory: set the suite option data_root or ${DATA_ENV} "
                         f"(it, or its {data.name}/ subfolder, must hold {wanted}); get them from "
                         f"{data.source}")
    for root in candidates:
        if _missing(data, root):
            continue
        # learn2learn writes CIFAR-FS's processed splits beside the unzipped archive on first use.
        unprocessed = data.name == "cifar-fs" and not (root / _cifarfs_files("test")[0]).exists()
        if unprocessed and not os.access(root / "cifarfs", os.W_OK):
            raise UsageError(f"{root / 'cifarfs'} holds the unzipped cifar100.zip but no processed/ splits, "
                             "and learn2learn cannot write them there (not writable): let it process once "
                             "where the folder is writable, then copy cifarfs/processed/")
        return root
    tried, missing = " or ".join(str(c) for c in candidates), _missing(data, candidates[0])
    partly = len(missing) < len(expected) and candidates[0].is_dir()
    raise UsageError(f"{data.title} files not found in {tried}: expected {wanted} there, as learn2learn lays "
                     "them out" + (f" ({candidates[0]} lacks {', '.join(missing)})" if partly else "")
                     + f"; nothing is downloaded: get them from {data.source}")

