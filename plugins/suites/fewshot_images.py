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

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from harness import HarnessError, TaskSuiteSpec, UsageError, hookimpl
from harness.storage import DATA_ENV, cache_folder, cached, data_folders, file_sha256
from metaharness_plugins._learn2learn import import_learn2learn
from metaharness_plugins.backbones import conv4
from metaharness_plugins.fewshot.pool import ClassPool
from metaharness_plugins.fewshot.suite import BATCH_NORM, SPLITS, FewShotConfig, FewShotSuite, sampler_problem

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


# --- finding the files ---------------------------------------------------------------------------------


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


# --- reading the files with learn2learn, once -----------------------------------------------------------


def _images_from_hwc(pixels: Any, what: str) -> torch.Tensor:
    """uint8 [N, 3, H, W] from an array of shape [N, H, W, 3] (the pickles' layout)."""
    import numpy as np

    is_array = isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8
    if not is_array or pixels.ndim != 4 or pixels.shape[3] != 3:
        got = f"{type(pixels).__name__} {getattr(pixels, 'dtype', '')} {getattr(pixels, 'shape', '')}"
        raise HarnessError(f"{what}: expected uint8 images of shape [N, H, W, 3], got {got}")
    return torch.from_numpy(pixels).permute(0, 3, 1, 2)


def _decode_all(dataset: Any, where: str, name: Callable[[int], str]) -> torch.Tensor:
    """uint8 [N, 3, H, W] of every PIL image a learn2learn dataset yields (RGB; all of one size)."""
    import numpy as np

    if len(dataset) == 0:
        raise HarnessError(f"{where}: no images")
    images = None
    for i in range(len(dataset)):
        try:
            pixels = np.asarray(dataset[i][0].convert("RGB"))
        except Exception as exc:  # PIL raises several types for a damaged image
            raise HarnessError(f"cannot decode {name(i)}: {type(exc).__name__}: {exc}") from exc
        if images is None:
            images = torch.empty(len(dataset), 3, *pixels.shape[:2], dtype=torch.uint8)
        if tuple(pixels.shape[:2]) != tuple(images.shape[2:]):
            raise HarnessError(f"{name(i)} is {pixels.shape[1]}x{pixels.shape[0]} pixels, the first image "
                               f"{images.shape[3]}x{images.shape[2]}; the images of a split must be one size")
        images[i] = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
    return images


def read_split(data: ImageSet, root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(images uint8 [N, 3, H, W], labels [N], class names by label) of one split, as learn2learn reads it."""
    import numpy as np

    l2l_datasets = import_learn2learn().vision.datasets

    mode, files = MODES[split], ", ".join(data.files(MODES[split]))
    dataset = getattr(l2l_datasets, data.loader)(root=str(root), mode=mode, download=False)
    where = f"{data.title} {split} split ({files} in {root})"
    if data.name == "mini-imagenet":
        images = _images_from_hwc(dataset.data["image_data"], where)
        names = [str(n) for n in dataset.data["class_dict"]]  # learn2learn labels classes in this order
        labels = torch.from_numpy(np.asarray(dataset.y)).long()
    elif data.name == "fc100":
        images = _images_from_hwc(dataset.images, where)
        labels = torch.as_tensor(np.asarray(dataset.labels)).long()
        names = [str(n) for n in range(int(labels.max()) + 1)] if len(labels) else []
    elif data.name == "tiered-imagenet":
        labels = torch.as_tensor(np.asarray(dataset.labels)).long()
        if len(labels) != len(dataset.images):
            raise HarnessError(f"{where}: {len(dataset.images)} images but {len(labels)} labels")
        images = _decode_all(dataset, where, lambda i: f"{where} image {i}")
        names = [str(n) for n in range(int(labels.max()) + 1)] if len(labels) else []
    else:  # cifar-fs: a torchvision ImageFolder over cifarfs/processed/<split>/<class>/
        images = _decode_all(dataset, where, lambda i: f"{where} image {dataset.samples[i][0]}")
        labels, names = torch.as_tensor(dataset.targets).long(), list(dataset.classes)
    if len(labels) != len(images):
        raise HarnessError(f"{where}: {len(images)} images but {len(labels)} labels")
    return images, labels, names


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 [N, 3, H, W] to [N, 3, size, size], in chunks to bound memory."""
    if tuple(images.shape[2:]) == (size, size):
        return images
    out = torch.empty(len(images), 3, size, size, dtype=torch.uint8)
    for start in range(0, len(images), 1024):
        chunk = images[start : start + 1024].to(torch.float32)
        chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + 1024] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out


@dataclass(frozen=True)
class SplitData:
    """One split's images, class-major: class c holds images[offsets[c] : offsets[c] + counts[c]]."""

    images: torch.Tensor  # uint8 [N, 3, S, S], RGB
    counts: torch.Tensor  # int64 [classes]
    offsets: torch.Tensor  # int64 [classes]
    names: tuple[str, ...]
    sources: tuple[str, ...]  # the files read, relative to the data root
    sha256: str  # of the files' bytes (several files: of their names and digests)
    cache_file: Path
    from_cache: bool


def _source_files(data: ImageSet, root: Path, split: str) -> list[Path]:
    paths = [root / f for f in data.files(MODES[split])]
    # CIFAR-FS: every image file of the split's folder; the others: the named files.
    return sorted(p for p in paths[0].rglob("*") if p.is_file()) if data.name == "cifar-fs" else paths


def _sha256(root: Path, paths: list[Path]) -> str:
    digests = [f"{path.relative_to(root).as_posix()} {file_sha256(path)}" for path in paths]
    if len(digests) == 1:
        return digests[0].split()[-1]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def load_split(data: ImageSet, root: Path, split: str, image_size: int, cache_dir: Path) -> SplitData:
    """One split, from the cache file when one matches the source files, else read by learn2learn."""
    if data.name == "cifar-fs":
        _process_cifarfs(root)
    paths = _source_files(data, root, split)
    stats = [(p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    key = hashlib.sha256(json.dumps([FORMAT, data.name, split, image_size, stats]).encode()).hexdigest()[:24]
    cache_file = cache_dir / f"{data.name}-{split}-{image_size}px-{key}.pt"

    def convert() -> dict[str, Any]:
        try:
            images, labels, names = read_split(data, root, split)
        except HarnessError:
            raise
        except Exception as exc:  # pickle, PIL and learn2learn raise many types for a damaged file
            files = ", ".join(data.files(MODES[split]))
            raise HarnessError(f"cannot read the {data.title} {split} split ({files} in {root}) with "
                               f"learn2learn's {data.loader}: {type(exc).__name__}: {exc}; the file may be "
                               f"truncated or not the official one (get it from {data.source})") from exc
        used, labels = torch.unique(labels, return_inverse=True)
        order = labels.argsort(stable=True)
        return {"format": FORMAT, "key": key, "images": _resize(images[order].contiguous(), image_size),
                "counts": torch.bincount(labels, minlength=len(used)), "names": [names[int(u)] for u in used],
                "sources": [s for s, _, _ in stats], "sha256": _sha256(root, paths),
                "learn2learn": import_learn2learn().__version__}

    # Memory-mapped: cells of a grid share the page cache instead of each holding a copy.
    blob, from_cache = cached(cache_file, convert, valid=lambda b: b["format"] == FORMAT and b["key"] == key,
                              mmap=True)
    return _split_data(blob, cache_file, from_cache)


def _split_data(blob: dict[str, Any], cache_file: Path, from_cache: bool) -> SplitData:
    counts = blob["counts"]
    return SplitData(blob["images"], counts, counts.cumsum(0) - counts, tuple(blob["names"]),
                     tuple(blob["sources"]), blob["sha256"], cache_file, from_cache)


def _process_cifarfs(root: Path) -> None:
    """Have learn2learn copy the unzipped cifar100.zip into its processed splits when they are not there;
    where the archive is there too, check that they are whole (learn2learn never finishes an interrupted
    copy: it only looks whether processed/ exists)."""
    processed, raw = root / "cifarfs" / "processed", root / "cifarfs" / "cifar100"
    if not processed.exists():
        from learn2learn.vision.datasets import CIFARFS

        try:
            CIFARFS(root=str(root), mode="train", download=False)
        except OSError as exc:
            raise UsageError(f"learn2learn could not write the CIFAR-FS splits into {processed}: {exc}; make "
                             "the folder writable") from exc
    for split in SPLITS:
        listed = raw / "splits" / "bertinetto" / f"{split}.txt"
        if not listed.is_file():
            continue
        for name in listed.read_text().split():
            copied = processed / split / name
            source = raw / "data" / name
            if not copied.is_dir() or len(os.listdir(copied)) != len(os.listdir(source)):
                raise HarnessError(f"{copied} is missing or does not hold the images of {source}: an "
                                   f"interrupted learn2learn processing? Delete {processed} so it is made "
                                   "again")


# --- the suite --------------------------------------------------------------------------------------------


class FewShotImagesSuite(FewShotSuite):
    """N-way K-shot episodes of one of the four image datasets, scored by query accuracy."""

    CHANNELS = 3

    def __init__(self, config: FewShotImagesConfig) -> None:
        super().__init__(config)
        cfg = config
        self.data_set = IMAGE_SETS[cfg.dataset]
        self.root = find_data_root(cfg)
        cache_dir = cache_folder(cfg.cache_dir, cfg.dataset)
        self.splits = {s: load_split(self.data_set, self.root, s, cfg.image_size, cache_dir) for s in SPLITS}
        self.set_pools({split: ClassPool(d.images, d.offsets, d.counts)
                        for split, d in self.splits.items()}, self.data_set.title,
                       name=lambda split, c: self.splits[split].names[c])

    def build_model(self) -> nn.Module:
        """The option `model`: an nn.Sequential ending in the nn.Linear classifier (`split_classifier`)."""
        cfg = self.config
        if cfg.model == "resnet12":
            return resnet12(cfg.ways)
        # MAML's mini-ImageNet conv4 has 32 filters (section 5.2, against overfitting), ProtoNets' 64.
        return conv4(3, 64 if cfg.model == "conv4-64" else 32, cfg.ways, cfg.image_size,
                     pool=cfg.model != "conv4-nopool")

    def describe(self) -> dict[str, Any]:
        model = self.config.model
        return {
            "dataset": self.data_set.title,
            "data_root": str(self.root),
            "loader": f"learn2learn.vision.datasets.{self.data_set.loader}",
            "splits": {split: {"classes": len(d.counts), "images": len(d.images),
                               "images_per_class": [int(d.counts.min()), int(d.counts.max())],
                               "files": list(d.sources) if len(d.sources) <= 4 else
                               f"{d.sources[0].rsplit('/', 2)[0]}/ ({len(d.sources)} files)",
                               "sha256": d.sha256, "cache_file": str(d.cache_file)}
                       for split, d in self.splits.items()},
            "official_classes": dict(zip(SPLITS, self.data_set.classes)),
            "pixels": "float32 RGB in [0, 1], no mean/std normalisation",
            "sampler": self.sampler_description(),
            "model": model + {"conv4": " (32 filters, MAML)", "conv4-64": " (64 filters, ProtoNets)",
                              "conv4-nopool": " (32 filters, stride-2 convolutions, MAML's no-pool variant)",
                              "resnet12": " (learn2learn ResNet12Backbone 64-160-320-640, DropBlock off, "
                                          "global average pool)"}[model],
            "batch_norm": BATCH_NORM,
        }


# --- models -------------------------------------------------------------------------------------------------


def batch_statistics_only(model: nn.Module) -> nn.Module:
    """Switch every batch norm of `model` to batch statistics, dropping its running buffers (in place)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.track_running_stats = False
            module.running_mean = module.running_var = module.num_batches_tracked = None
    return model


def resnet12(ways: int) -> nn.Sequential:
    """learn2learn's ResNet-12 (MetaOptNet's widths 64-160-320-640, its initialisation): its four residual
    blocks, a global average pool (what its AvgPool2d(5) is on 84-pixel images, for any size) and a
    linear classifier. DropBlock and dropout are off, as random masks cannot run under `vmap` without
    choosing a randomness mode; batch norm uses batch statistics only (`BATCH_NORM`)."""
    from learn2learn.vision.models.resnet12 import ResNet12Backbone

    body = ResNet12Backbone(avg_pool=False, wider=True, embedding_dropout=0.0, dropblock_dropout=0.0)
    blocks = [body.layer1, body.layer2, body.layer3, body.layer4]
    model = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(640, ways))
    return batch_statistics_only(model)


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
            factory=FewShotImagesSuite,
            config=CONFIGS[name],
            task_kind="classification",
            description=(f"N-way K-shot {data.title} classification ({'/'.join(map(str, data.classes))} "
                         f"classes), learn2learn's files under the data root; accuracy"),
            paper=_PAPERS[name] + "; models: Finn et al. 2017, Snell et al. 2017, Lee et al. 2019",
            requires=("learn2learn", "torchvision", "PIL"),
            check=check_data,
            episode_neutral=("model", "data_root", "cache_dir"),  # conv4 and ResNet-12 on the same episodes
        )
        for name, data in IMAGE_SETS.items()
    ]
