"""The four image suites themselves: reading and caching each split with learn2learn, the suite, and
ResNet-12 (the `fewshot_images` plugin registers them; imported when a cell builds one)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness import HarnessError, UsageError
from harness.specs import SPLITS
from harness.storage import cache_folder, cached, file_sha256
from metaharness_plugins._learn2learn import import_learn2learn
from metaharness_plugins.backbones import conv4
from metaharness_plugins.fewshot.config import BATCH_NORM
from metaharness_plugins.fewshot.image_sets import IMAGE_SETS, MODES, ImageSet, find_data_root
from metaharness_plugins.fewshot.pool import ClassPool
from metaharness_plugins.fewshot.suite import FewShotSuite

FORMAT = 1  # bump when conversion changes, so old cache files are not reused


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


class FewShotImagesSuite(FewShotSuite):
    """N-way K-shot episodes of one of the four image datasets, scored by query accuracy."""

    CHANNELS = 3

    def __init__(self, config: Any) -> None:
        """`config`: one of the `fewshot_images` plugin's configurations (`FewShotImagesConfig`)."""
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
