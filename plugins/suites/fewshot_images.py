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

from dataclasses import dataclass
from typing import ClassVar

from harness import TaskSuiteSpec, UsageError, forward_attributes, hookimpl
from metaharness_plugins._learn2learn import INSTALL_HINT
from metaharness_plugins.fewshot.config import FewShotConfig, sampler_problem
from metaharness_plugins.fewshot.image_sets import IMAGE_SETS, find_data_root


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
