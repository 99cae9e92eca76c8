"""Few-shot classification of procedurally generated glyphs: an offline stand-in for Omniglot (Lake,
Salakhutdinov & Tenenbaum 2015) that needs no data files and no network.

Each class is a fixed random "stroke program": 2-5 strokes, each a cubic Bezier curve whose four
control points are a short random walk in the unit square; later strokes often start at an end of an
earlier one, as pen strokes of a character do. Class c is a pure function of (seed, c), so glyph c is
the same forever and for any `num_classes`. Each drawing of a class is the program with its own
jitter: control points moved a little, a random affine map (rotation, scale, shear, translation) and
its own stroke width, rendered by an anti-aliased, vectorised torch rasteriser (each pixel's distance
to the strokes, from a separable Gaussian line integral computed as one batched matrix product, then
a one-pixel linear ramp at the stroke's edge; see `render`). Measured on one CPU thread: 230-340
5-way 1-shot 15-query episodes per second, rendered afresh every time.

Episodes have the Omniglot suite's layout (ink = 1 on a dark background) and the same conv4 model.

With `drawings` = N > 0 each class instead has a fixed pool of N drawings, rendered once when the class
is first sampled, as a pure function of (seed, class, N, image_size), and stored as uint8 as Omniglot's
images are: episodes take distinct drawings of the pool, as Omniglot's episodes take 20 drawings per
character. Only then can `sampler = "learn2learn"` draw the episodes through learn2learn's TaskDataset
(see `l2l_sampler`): TaskDataset samples a finite labelled dataset, which unlimited fresh drawings are not.
With the same pool both samplers draw from the same task distribution (not the same episodes).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness import TaskSuiteSpec, forward_attributes, hookimpl
from metaharness_plugins.fewshot.config import FewShotConfig, positive_int, sampler_problem

MAX_PER_CLASS = 1000  # rendered images per class and episode (shots + query)


MAX_CLASSES = 1_000_000


@dataclass(frozen=True)
class GlyphsConfig(FewShotConfig):
    """Episode sizes (`FewShotConfig`), the glyph universe, the sampler and the model. Classes
    0..num_classes-1 split 3/4 train, 1/8 val, the rest test (3000 / 500 / 500 by default); `seed` picks
    the universe of glyphs, not the episodes. `drawings` 0 renders every drawing afresh; N > 0 gives each
    class a fixed pool of N drawings. `sampler` "learn2learn" (TaskDataset) needs a pool (`drawings` > 0)."""

    num_classes: int = 4000
    seed: int = 0
    drawings: int = 0

    @property
    def ranges(self) -> dict[str, tuple[int, int]]:
        """[start, stop) class indices of each split (`class_ranges`)."""
        return class_ranges(self.num_classes)

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_int(self, "num_classes")
        positive_int(self, "seed", "drawings", minimum=0)
        per_class = self.shots + self.query
        if per_class > MAX_PER_CLASS or self.num_classes > MAX_CLASSES:
            raise ValueError(f"shots + query is {per_class} and num_classes {self.num_classes}; the glyph suite "
                             f"renders at most {MAX_PER_CLASS} images per class and {MAX_CLASSES:,} classes")
        if self.drawings and per_class > self.drawings:
            raise ValueError(f"shots + query = {self.shots} + {self.query} = {per_class} images per class, "
                             f"but drawings={self.drawings} gives each class only {self.drawings}")
        if self.sampler == "learn2learn" and not self.drawings:
            raise ValueError(f"sampler 'learn2learn' needs a fixed pool of drawings per class (TaskDataset "
                             f"samples a finite labelled dataset; drawings=0 renders every drawing afresh): "
                             f"set drawings to at least shots + query = {per_class}, e.g. "
                             f"{max(per_class, 20)}")
        sizes = {split: hi - lo for split, (lo, hi) in self.ranges.items()}
        smallest = min(sizes, key=lambda s: sizes[s])
        if self.ways > sizes[smallest]:
            raise ValueError(f"{self.ways}-way episodes need {self.ways} classes in every split, but "
                             f"num_classes={self.num_classes} leaves {sizes[smallest]} in the {smallest} "
                             f"split (splits: {sizes}); raise num_classes to at least {8 * self.ways}")


def class_ranges(num_classes: int) -> dict[str, tuple[int, int]]:
    """[start, stop) class indices of each split: 3/4 train, 1/8 val, the rest test."""
    train, val = num_classes * 3 // 4, num_classes // 8
    return {"train": (0, train), "val": (train, train + val), "test": (train + val, num_classes)}


def check_config(cfg: GlyphsConfig) -> str:
    """'' when `cfg` can run here, else why not: the learn2learn sampler needs learn2learn installed."""
    return sampler_problem(cfg)


@hookimpl
def harness_register_task_suites() -> list[TaskSuiteSpec]:
    return [
        TaskSuiteSpec(
            name="glyphs",
            factory="metaharness_plugins.suites._glyphs:GlyphsSuite",
            config=GlyphsConfig,
            task_kind="classification",
            description="N-way K-shot classification of procedurally generated stroke glyphs (offline, no "
                        "data files); accuracy",
            paper="procedural stand-in for Omniglot (Lake et al. 2015)",
            check=check_config,
            episode_neutral=("model",),
        )
    ]


# The implementation lives in _glyphs.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.suites._glyphs")
