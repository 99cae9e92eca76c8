"""The few-shot image suites' options, validated: episode sizes, image side, model and sampler. Imports
nothing heavy, so plugins can register their configurations without torch (`harness list`, grid checks).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, ClassVar

from metaharness_plugins._learn2learn import INSTALL_HINT

SAMPLERS = ("native", "learn2learn")


def check_sampler(sampler: object) -> None:
    """For a suite config's `__post_init__`: a ValueError unless `sampler` is one of SAMPLERS."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")


def missing_learn2learn() -> str:
    """'' when learn2learn can be imported here, else why not and how to install it (cheap: no import)."""
    if importlib.util.find_spec("learn2learn") is None:
        return f"sampler 'learn2learn' needs the learn2learn package, not installed here; run {INSTALL_HINT}"
    return ""


IMAGE_SIZES = (8, 512)  # pixels, inclusive
BATCH_NORM = ("batch statistics at meta-train and meta-test (track_running_stats=False, no running buffers):"
              " the transductive setting of MAML's code; works under torch.func.functional_call and vmap")


def positive_int(cfg: object, *names: str, minimum: int = 1) -> None:
    """ValueError naming the first of `names` that is not an integer >= `minimum` (bools refused)."""
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            kind = "a positive" if minimum == 1 else "a non-negative" if minimum == 0 else f"an >= {minimum}"
            raise ValueError(f"{name} must be {kind} integer, got {value!r}")


@dataclass(frozen=True)
class ImageConfig:
    """What every image suite has: query images per class, the image side and the model.

    MODELS lists the valid `model` values; those in POOLED shrink the image 16-fold with four 2x2
    max-pools, so they need at least 16 pixels.
    """

    query: int = 15
    image_size: int = 28
    model: str = "conv4"
    MODELS: ClassVar[tuple[str, ...]] = ("conv4", "conv4-nopool")
    POOLED: ClassVar[tuple[str, ...]] = ("conv4",)

    def __post_init__(self) -> None:
        positive_int(self, "query", "image_size")
        low, high = IMAGE_SIZES
        if not low <= self.image_size <= high:
            raise ValueError(f"image_size must be from {low} to {high} pixels, got {self.image_size}")
        if self.model not in self.MODELS:
            raise ValueError(f"model must be one of {', '.join(self.MODELS)}, got {self.model!r}")
        if self.model in self.POOLED and self.image_size < 16:
            raise ValueError(f"model {self.model!r} needs image_size >= 16 (four 2x2 max-pools), got "
                             f"{self.image_size}; use model 'conv4-nopool' for smaller images")


@dataclass(frozen=True)
class FewShotConfig(ImageConfig):
    """N-way K-shot episodes: `ways` classes, `shots` support and `query` query images each. `sampler`
    "native" draws them with the vectorised `ClassPool.sample`, "learn2learn" with learn2learn's
    TaskDataset (`taskdataset`): the same task distribution, other episodes."""

    ways: int = 5
    shots: int = 1
    sampler: str = "native"

    def __post_init__(self) -> None:
        check_sampler(self.sampler)
        positive_int(self, "ways", "shots")
        super().__post_init__()


def sampler_problem(cfg: Any) -> str:
    """'' unless `cfg` asks for the learn2learn sampler where learn2learn is not installed (for `check`)."""
    return missing_learn2learn() if getattr(cfg, "sampler", "native") == "learn2learn" else ""


