"""learn2learn's TaskDataset as an episode sampler over class pools (plugins/fewshot/taskdataset.py): episodes traced back to their class and drawing (valid,
rotated where the class is, in the native samplers' layout), reproducibility from the harness generator
alone, the class distribution, errors, the real Omniglot classes, and the glyphs suite's sampler option."""

from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

pytest.importorskip("learn2learn", reason="learn2learn is not installed (make learn2learn)")
from harness import TaskBatch, UsageError  # noqa: E402
from metaharness_plugins.fewshot.config import SAMPLERS, check_sampler, missing_learn2learn  # noqa: E402
from metaharness_plugins.fewshot.pool import ClassPool  # noqa: E402
from metaharness_plugins.fewshot.taskdataset import ClassImages, TaskDatasetSampler  # noqa: E402
from metaharness_plugins.suites import glyphs  # noqa: E402
from metaharness_plugins.suites.glyphs import GlyphsConfig, GlyphsSuite  # noqa: E402


def from_characters(images: torch.Tensor, classes: dict, ways: int, shots: int, query: int) -> TaskDatasetSampler:
    """The sampler over pools of characters: split -> (character of each class, its quarter turns)."""
    pools = {split: ClassPool.of_characters(images, chars, turns) for split, (chars, turns) in classes.items()}
    return TaskDatasetSampler(pools, ways, shots, query)


def from_class_slices(splits: dict, ways: int, shots: int, query: int) -> TaskDatasetSampler:
    """The sampler over pools of class slices: split -> (images, offsets, counts), unrotated."""
    pools = {split: ClassPool(images, offsets, counts) for split, (images, offsets, counts) in splits.items()}
    return TaskDatasetSampler(pools, ways, shots, query)


DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "omniglot"
SIZE = 10
Drawing = tuple[int, int, int]  # (character, drawing, quarter turns)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """14 random "characters" of 20 drawings: every drawing and every rotation of one differs."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (14, 20, SIZE, SIZE), dtype=torch.uint8, generator=generator)


@pytest.fixture(scope="module")
def classes() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Train: characters 0-8 in all four rotations (36 classes); test: characters 9-13 unrotated."""
    return {"train": (torch.arange(9).repeat(4), torch.arange(4).repeat_interleave(9)),
            "test": (torch.arange(9, 14), torch.zeros(5, dtype=torch.long))}


@pytest.fixture(scope="module")
def sampler(images: torch.Tensor, classes: dict) -> TaskDatasetSampler:
    return from_characters(images, classes, ways=5, shots=2, query=3)


def make_lookup(images: torch.Tensor) -> dict[bytes, Drawing]:
    """uint8 image bytes -> (character, drawing, quarter turns), rotated as the native samplers rotate."""
    table = {}
    for c in range(images.shape[0]):
        for d in range(images.shape[1]):
            for k in range(4):
                table[torch.rot90(images[c, d], k, dims=(-2, -1)).numpy().tobytes()] = (c, d, k)
    assert len(table) == images.shape[0] * images.shape[1] * 4
    return table


def trace(x: torch.Tensor, lookup: dict[bytes, Drawing]) -> list[Drawing]:
    """(character, drawing, turns) of each float image of x [N, 1, H, W], found through its uint8 pixels."""
    pixels = (x * 255).round().to(torch.uint8)
    return [lookup[pixels[i, 0].numpy().tobytes()] for i in range(x.shape[0])]


def check_episodes(batch: TaskBatch, lookup: dict, allowed: set[tuple[int, int]], ways: int, shots: int,
                   query: int) -> list[list[tuple[int, int]]]:
    """Assert every episode is valid; return each episode's classes (character, turns) in label order."""
    n = batch.num_tasks
    size = batch.support_x.shape[-2:]
    assert batch.support_x.shape == (n, ways * shots, 1, *size)
    assert batch.query_x.shape == (n, ways * query, 1, *size)
    assert batch.support_x.dtype == batch.query_x.dtype == torch.float32
    assert batch.support_y.dtype == batch.query_y.dtype == torch.int64
    assert 0.0 <= float(batch.support_x.min()) and float(batch.query_x.max()) <= 1.0
    episodes = []
    for i in range(n):
        # The native layout: class-major labels 0..ways-1.
        assert batch.support_y[i].tolist() == [label for label in range(ways) for _ in range(shots)]
        assert batch.query_y[i].tolist() == [label for label in range(ways) for _ in range(query)]
        support = trace(batch.support_x[i], lookup)
        found = support + trace(batch.query_x[i], lookup)
        labels = batch.support_y[i].tolist() + batch.query_y[i].tolist()
        by_label: dict[int, list[Drawing]] = {}
        for label, drawing in zip(labels, found):
            by_label.setdefault(label, []).append(drawing)
        episode = []
        for drawings in by_label.values():
            kinds = {(c, k) for c, _, k in drawings}
            assert len(kinds) == 1  # one class per label: one character, turned by the class's turns
            assert len({d for _, d, _ in drawings}) == shots + query  # distinct drawings
            episode += kinds
        assert len(set(episode)) == ways and set(episode) <= allowed
        assert not set(support) & set(found[len(support):])  # no image in both support and query
        episodes.append(episode)
    return episodes


def allowed_classes(classes: dict, split: str) -> set[tuple[int, int]]:
    chars, turns = classes[split]
    return set(zip(chars.tolist(), turns.tolist()))


# --- episodes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test"])
def test_episodes_are_valid_and_in_the_native_layout(
    sampler: TaskDatasetSampler, images: torch.Tensor, classes: dict, split: str
) -> None:
    lookup = make_lookup(images)
    batch = sampler.sample(40, torch.Generator().manual_seed(1), split)
    episodes = check_episodes(batch, lookup, allowed_classes(classes, split), ways=5, shots=2, query=3)
    if split == "train":
        turned = sum(k != 0 for episode in episodes for _, k in episode)
        assert 100 <= turned <= 200  # 3 of 4 classes are rotated: about 150 of the 200 classes drawn


def test_same_generator_seed_same_episodes_different_seed_different(sampler: TaskDatasetSampler) -> None:
    outside = random.getstate()
    a = sampler.sample(6, torch.Generator().manual_seed(11), "train")
    random.seed(12345)  # Python's global random state does not leak into the episodes
    b = sampler.sample(6, torch.Generator().manual_seed(11), "train")
    random.setstate(outside)
    c = sampler.sample(6, torch.Generator().manual_seed(12), "train")
    for name in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.support_x, c.support_x) and not torch.equal(a.query_x, c.query_x)
    assert random.getstate() == outside  # and the sampler leaves the global state as it found it
    generator = torch.Generator().manual_seed(11)
    first, second = sampler.sample(6, generator, "train"), sampler.sample(6, generator, "train")
    assert torch.equal(first.query_x, a.query_x) and not torch.equal(second.query_x, first.query_x)


def test_every_class_and_drawing_gets_drawn(sampler: TaskDatasetSampler, images: torch.Tensor) -> None:
    lookup = make_lookup(images)
    batch = sampler.sample(300, torch.Generator().manual_seed(5), "train")
    picked: Counter[tuple[int, int]] = Counter()
    label0: Counter[tuple[int, int]] = Counter()
    support_drawings = set()
    for i in range(batch.num_tasks):
        support = trace(batch.support_x[i], lookup)
        picked.update({(c, k) for c, _, k in support})
        label0[support[0][0], support[0][2]] += 1
        support_drawings |= {d for _, d, _ in support}
    assert len(picked) == 36  # every class of the split
    assert 15 <= min(picked.values()) and max(picked.values()) <= 75  # expected 300 * 5 / 36 = 41.7 each
    assert len(label0) >= 30 and max(label0.values()) < 25  # label 0 is a random class: 8.3 each expected
    assert support_drawings == set(range(20))  # any drawing can be a shot, not only the first ones


def test_class_images_dataset_and_description(images: torch.Tensor, sampler: TaskDatasetSampler) -> None:
    pool = ClassPool.of_characters(images, torch.tensor([3, 3, 0]), torch.tensor([0, 1, 2]))
    items = ClassImages(pool)
    assert len(items) == 60 and items.sizes == [20, 20, 20]
    assert items.labels_to_indices() == {0: list(range(20)), 1: list(range(20, 40)), 2: list(range(40, 60))}
    image, label = items[27]  # class 1: character 3 turned once
    assert label == 1 and torch.equal(image[0], torch.rot90(images[3, 7], 1, dims=(-2, -1)))
    assert torch.equal(items[7][0][0], images[3, 7]) and items[7][1] == 0
    assert torch.equal(items[46][0][0], torch.rot90(images[0, 6], 2)) and items[46][1] == 2
    described = sampler.describe()
    assert described["name"] == "learn2learn" and described["learn2learn"] == "0.2.0"
    assert described["task_transforms"] == ["NWays(5)", "KShots(5)", "LoadData", "RemapLabels",
                                            "ConsecutiveLabels"]


def test_class_slices_of_rgb_images_with_uneven_classes() -> None:
    """The few-shot image suites' layout: one uint8 [N, 3, H, W] tensor per split, class c in the slice
    offsets[c] : offsets[c] + counts[c]; every image is a distinct random one, so each traces back."""
    counts = torch.tensor([6, 9, 7, 12, 6, 8])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)[:-1]])
    rgb = torch.randint(0, 256, (int(counts.sum()), 3, 6, 6), dtype=torch.uint8,
                        generator=torch.Generator().manual_seed(3))
    rows = [range(o, o + n) for o, n in zip(offsets.tolist(), counts.tolist())]
    owner = {rgb[i].numpy().tobytes(): (c, i) for c in range(6) for i in rows[c]}
    splits = {"train": (rgb, offsets, counts)}
    sampler = from_class_slices(splits, ways=4, shots=2, query=4)
    batch = sampler.sample(60, torch.Generator().manual_seed(0), "train")
    assert batch.support_x.shape == (60, 8, 3, 6, 6) and batch.query_x.shape == (60, 16, 3, 6, 6)
    drawn = Counter()
    for e in range(60):
        x = torch.cat([batch.support_x[e], batch.query_x[e]])
        found = [owner[(x[i] * 255).round().to(torch.uint8).numpy().tobytes()] for i in range(24)]
        labels = batch.support_y[e].tolist() + batch.query_y[e].tolist()
        by_label = {label: [f for f, y in zip(found, labels) if y == label] for label in range(4)}
        assert all(len({c for c, _ in v}) == 1 and len({i for _, i in v}) == 6 for v in by_label.values())
        drawn.update({v[0][0] for v in by_label.values()})
    assert set(drawn) == set(range(6))  # every class, the smallest ones (6 images = shots + query) too
    with pytest.raises(ValueError, match=r"class 0 of split 'train' has 6"):
        from_class_slices(splits, ways=4, shots=3, query=4)
    with pytest.raises(ValueError, match=r"every class's rows .* must be a non-empty slice of the pool's 48 images"):
        from_class_slices({"train": (rgb, offsets + 1, counts)}, ways=4, shots=2, query=4)
    with pytest.raises(ValueError, match=r"images must be a uint8 tensor \[N, C, H, W\], got"):
        from_class_slices({"train": (rgb[0, 0], offsets, counts)}, 4, 2, 4)


# --- errors ------------------------------------------------------------------------------------------


def split_a(characters: list[int], turns: list[int]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {"a": (torch.tensor(characters), torch.tensor(turns))}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ways": 0}, "ways must be a positive integer, got 0"),
        ({"query": 1.5}, "query must be a positive integer, got 1.5"),
        ({"images": "float"}, r"images must be a uint8 tensor \[N, C, H, W\], got torch\.f"),
        ({"shots": 10, "query": 11}, r"shots \+ query = 10 \+ 11 = 21 images per class, but class 0 of "),
        ({"ways": 6}, "6-way episodes need 6 classes, but split 'test' has 5"),
        ({"classes": {}}, "the sampler needs at least one split of classes"),
        ({"classes": split_a([13, 14], [0, 0])}, r"character indices must lie in 0\.\.13"),
        ({"classes": split_a([1, 2], [0, 4])}, r"quarter turns must lie in 0\.\.3"),
        ({"classes": split_a([1, 2], [1])}, "characters and turns must be vectors of one length"),
    ],
)
def test_bad_arguments_are_rejected_before_any_work(
    images: torch.Tensor, classes: dict, change: dict, message: str
) -> None:
    args = {"images": images, "classes": classes, "ways": 2, "shots": 1, "query": 1, **change}
    if change.get("images") == "float":
        args["images"] = images.float()
    with pytest.raises(ValueError, match=message):
        from_characters(**args)


def test_unknown_split_and_bad_task_count(sampler: TaskDatasetSampler) -> None:
    with pytest.raises(ValueError, match="unknown split 'val'; valid splits: train, test"):
        sampler.sample(1, torch.Generator(), "val")
    with pytest.raises(ValueError, match="n_tasks must be a positive integer, got 0"):
        sampler.sample(0, torch.Generator(), "train")


def test_sampler_names_and_missing_learn2learn(
    images: torch.Tensor, classes: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert SAMPLERS == ("native", "learn2learn") and missing_learn2learn() == ""
    check_sampler("learn2learn")
    with pytest.raises(ValueError, match="sampler must be one of native, learn2learn, got 'torchmeta'"):
        check_sampler("torchmeta")
    monkeypatch.setitem(sys.modules, "learn2learn", None)  # as if it were not installed: import fails
    reason = missing_learn2learn()
    assert "needs the learn2learn package" in reason and "make learn2learn" in reason
    with pytest.raises(UsageError, match="cannot import learn2learn .*make learn2learn"):
        from_characters(images, classes, 2, 1, 1)
    assert glyphs.check_config(GlyphsConfig(sampler="learn2learn", drawings=20)) == reason
    assert glyphs.check_config(GlyphsConfig()) == ""


# --- real Omniglot -------------------------------------------------------------------------------------


def test_real_omniglot_classes_with_rotations() -> None:
    """The Omniglot suite's own class list (rotated training classes) through TaskDataset, 20-way 5-shot;
    decoded into the session's $HARNESS_CACHE (tests/conftest.py), never downloaded."""
    pytest.importorskip("PIL", reason="the Omniglot suite decodes PNG with Pillow")
    from metaharness_plugins.suites.omniglot import OmniglotConfig, OmniglotSuite

    if not all((DATA / name).is_file() for name in OmniglotConfig().archives):
        pytest.skip(f"the Omniglot small background sets are not in {DATA}")
    config = OmniglotConfig(data_root=str(DATA), rotations=True, ways=20, shots=5, download="never")
    suite = OmniglotSuite(config)
    sampler = TaskDatasetSampler(suite.pools, ways=20, shots=5, query=15)
    lookup = make_lookup(suite.data.images)
    native = suite.sample(4, torch.Generator().manual_seed(0), "train")
    ours = sampler.sample(4, torch.Generator().manual_seed(0), "train")
    for name in ("support_x", "support_y", "query_x", "query_y"):  # the same layout as the native sampler
        assert getattr(ours, name).shape == getattr(native, name).shape
        assert getattr(ours, name).dtype == getattr(native, name).dtype
    assert torch.equal(ours.support_y, native.support_y) and torch.equal(ours.query_y, native.query_y)
    test = sampler.sample(2, torch.Generator().manual_seed(0), "test")
    for split, batch in (("train", ours), ("test", test)):
        allowed = allowed_classes(suite.classes, split)
        episodes = check_episodes(batch, lookup, allowed, ways=20, shots=5, query=15)
        turned = sum(k != 0 for episode in episodes for _, k in episode)
        assert (40 <= turned <= 75) if split == "train" else turned == 0  # 60 of 80 expected


# --- the glyphs suite's sampler option -----------------------------------------------------------------


def small_glyphs(**options: object) -> GlyphsSuite:
    """80 classes (60 / 10 / 10), so pools render in a fraction of a second."""
    return GlyphsSuite(GlyphsConfig(num_classes=80, query=3, **options))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sampler": "torchmeta"}, "sampler must be one of native, learn2learn, got 'torchmeta'"),
        ({"sampler": "learn2learn"}, (r"sampler 'learn2learn' needs a fixed pool of drawings per class .* "
                                      r"set drawings to at least shots \+ query = 16, e.g. 20")),
        ({"drawings": -1}, "drawings must be a non-negative integer, got -1"),
        ({"drawings": 10}, (r"shots \+ query = 1 \+ 15 = 16 images per class, but drawings=10 gives each "
                            "class only 10")),
    ],
)
def test_glyphs_config_rejects_bad_sampler_settings(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GlyphsConfig(**options)


def test_glyphs_pools_are_pure_functions_of_the_class() -> None:
    suite = small_glyphs(drawings=8)
    pool = suite.pool(torch.tensor([70, 3]))
    assert pool.shape == (2, 8, 28, 28) and pool.dtype == torch.uint8 and int(pool.max()) == 255
    big = GlyphsSuite(GlyphsConfig(query=3, drawings=8))  # other num_classes, classes drawn in other order
    big.pool(torch.arange(0, 5))
    assert torch.equal(big.pool(torch.tensor([70, 3])), pool)
    other = small_glyphs(drawings=8, seed=1)  # another universe
    assert not torch.equal(other.pool(torch.tensor([3])), pool[1:])
    flat = pool.flatten(2).float()
    assert len({tuple(row.tolist()) for row in flat[0]}) == 8  # the drawings of a pool differ
    with pytest.raises(ValueError, match="this suite has no pools of drawings"):
        small_glyphs().pool(torch.tensor([0]))


@pytest.mark.parametrize("sampler_name", SAMPLERS)
def test_glyphs_pooled_episodes_come_from_the_pools(sampler_name: str) -> None:
    suite = small_glyphs(drawings=8, sampler=sampler_name)
    batch = suite.sample(30, torch.Generator().manual_seed(2), "val")
    lo, hi = suite.ranges["val"]
    pools = suite.pool(torch.arange(lo, hi))  # [10, 8, 28, 28]
    lookup = {pools[c, d].numpy().tobytes(): (lo + c, d, 0) for c in range(hi - lo) for d in range(8)}
    allowed = {(c, 0) for c in range(lo, hi)}
    episodes = check_episodes(batch, lookup, allowed, ways=5, shots=1, query=3)
    assert {c for episode in episodes for c, _ in episode} == set(range(lo, hi))  # every val class drawn
    again = small_glyphs(drawings=8, sampler=sampler_name).sample(30, torch.Generator().manual_seed(2), "val")
    assert torch.equal(again.query_x, batch.query_x) and torch.equal(again.support_x, batch.support_x)
    assert suite.describe()["sampler"]["name"] == sampler_name


def test_glyphs_without_a_pool_renders_afresh() -> None:
    """drawings=0 (the default) renders every drawing afresh and never fills a pool."""
    suite = small_glyphs()
    batch = suite.sample(2, torch.Generator().manual_seed(0), "train")
    assert suite._pool.numel() == 0 and not bool(suite._pooled.any())
    assert suite.describe()["sampler"] == {"name": "native"}
    pooled = small_glyphs(drawings=20).sample(2, torch.Generator().manual_seed(0), "train")
    assert not torch.equal(batch.query_x, pooled.query_x)
