"""Few-shot image classification on mini-ImageNet (Vinyals et al. 2016, "Matching Networks for One Shot
Learning", NeurIPS, with the split of Ravi & Larochelle 2017), tiered-ImageNet (Ren et al. 2018,
"Meta-Learning for Semi-Supervised Few-Shot Classification", ICLR), CIFAR-FS (Bertinetto et al. 2019,
"Meta-learning with differentiable closed-form solvers", ICLR) and FC100 (Oreshkin et al. 2018, "TADAM",
NeurIPS), read with learn2learn's dataset classes; models: the conv4 of Finn et al. 2017 (MAML) and Snell
et al. 2017 (ProtoNets), and learn2learn's ResNet-12 (Mishra et al. 2018; Lee et al. 2019, MetaOptNet).

Nothing is downloaded: the files must already be under the data root, in learn2learn's layout. Each split
is read once by learn2learn's class, turned into uint8 [images, 3, S, S] grouped by class (classes may
hold different numbers of images, as tiered-ImageNet's do) and cached on disk, keyed by the source files'
sizes and modification times; later runs memory-map the cache. Episodes are sampled here, vectorised.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from harness import TaskSuiteSpec, UsageError, forward_attributes, hookimpl
from harness.specs import SPLITS
from harness.storage import DATA_ENV, data_folders
from metaharness_plugins._learn2learn import INSTALL_HINT
from metaharness_plugins.fewshot.config import FewShotConfig, sampler_problem

MODES = {"train": "train", "val": "validation", "test": "test"}  # learn2learn's names of the splits


FORMAT = 1  # bump when conversion changes, so old cache files are not reused


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


@dataclass(frozen=True)
class FewShotImagesConfig(FewShotConfig):
    """Episode sizes and sampler (`FewShotConfig`), data and model. `image_size` is the side images are
    resized to (once, when converted; the files' own size needs no resizing); `data_root` is the folder
    learn2learn would be given as `root` (None: `$HARNESS_DATA/<suite>`, else `$HARNESS_DATA`);
    `cache_dir` None means `$HARNESS_CACHE/<suite>`, else `~/.cache/metaharness/<suite>`. `model`:
    conv4 (32 filters, MAML's mini-ImageNet model), conv4-64 (ProtoNets'), conv4-nopool (32 filters,
    stride-2 convolutions instead of max-pools), resnet12 (learn2learn's)."""

    image_size: int = 84
    data_root: str | None = None
    cache_dir: str | None = None
    dataset: ClassVar[str] = ""
    MODELS: ClassVar[tuple[str, ...]] = ("conv4", "conv4-64", "conv4-nopool", "resnet12")
    POOLED: ClassVar[tuple[str, ...]] = ("conv4", "conv4-64", "resnet12")


@dataclass(frozen=True)
class MiniImageNetConfig(FewShotImagesConfig):
    dataset: ClassVar[str] = "mini-imagenet"


@dataclass(frozen=True)
class TieredImageNetConfig(FewShotImagesConfig):
    dataset: ClassVar[str] = "tiered-imagenet"


@dataclass(frozen=True)
class CIFARFSConfig(FewShotImagesConfig):
    image_size: int = 32
    dataset: ClassVar[str] = "cifar-fs"


@dataclass(frozen=True)
class FC100Config(FewShotImagesConfig):
    image_size: int = 32
    dataset: ClassVar[str] = "fc100"


def _missing(data: ImageSet, root: Path) -> list[str]:
    """Files of `data` not under `root` ([] when all are there). CIFAR-FS counts as present when either
    learn2learn's processed splits or the unzipped cifar100.zip it processes them from are there."""
    wanted = [f for mode in MODES.values() for f in data.files(mode)]
    missing = [f for f in wanted if not (root / f).exists()]
    if data.name == "cifar-fs" and missing and all((root / f).exists() for f in CIFARFS_RAW):
        return []
    return missing


def find_data_root(cfg: FewShotImagesConfig) -> Path:
    """The folder holding every file of `cfg`'s dataset, or a UsageError naming the files, the folders
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


def check_data(cfg: FewShotImagesConfig) -> str:
    """'' when the files are where `cfg` says, else why not (the grid calls this before running)."""
    try:
        find_data_root(cfg)
    except UsageError as exc:
        return str(exc)
    return sampler_problem(cfg)


_PAPERS = {
    "mini-imagenet": "Vinyals et al. 2016 (data); Ravi & Larochelle 2017 (split)",
    "tiered-imagenet": "Ren et al. 2018, Meta-Learning for Semi-Supervised Few-Shot Classification (ICLR)",
    "cifar-fs": "Bertinetto et al. 2019, Meta-learning with differentiable closed-form solvers (ICLR)",
    "fc100": "Oreshkin et al. 2018, TADAM: Task dependent adaptive metric for improved few-shot learning",
}


CONFIGS = {c.dataset: c for c in (MiniImageNetConfig, TieredImageNetConfig, CIFARFSConfig, FC100Config)}


@hookimpl
def harness_register_task_suites() -> list[TaskSuiteSpec]:
    return [
        TaskSuiteSpec(
            name=name,
            factory="metaharness_plugins.suites._fewshot_images:FewShotImagesSuite",
            config=CONFIGS[name],
            task_kind="classification",
            description=(f"N-way K-shot {data.title} classification ({'/'.join(map(str, data.classes))} "
                         f"classes), learn2learn's files under the data root; accuracy"),
            paper=_PAPERS[name] + "; models: Finn et al. 2017, Snell et al. 2017, Lee et al. 2019",
            requires=("learn2learn", "torchvision", "PIL"),
            install_hint=INSTALL_HINT,
            check=check_data,
            episode_neutral=("model", "data_root", "cache_dir"),  # conv4 and ResNet-12 on the same episodes
        )
        for name, data in IMAGE_SETS.items()
    ]


# The implementation lives in _fewshot_images.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.suites._fewshot_images")
