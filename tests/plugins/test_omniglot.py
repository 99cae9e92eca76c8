"""The Omniglot suite on the real small background sets: loading, the disk cache, alphabet splits,
episodes traced back to their characters, errors, the conv4 and fully connected models under vmap, and
MAML learning; the "standard" protocol on full-layout archives made of real drawings; the paper grid."""

from __future__ import annotations

import io
import shutil
import time
import zipfile
from pathlib import Path

import pluggy
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

pytest.importorskip("PIL", reason="the Omniglot suite decodes PNG with Pillow (pip install pillow)")
from PIL import Image, ImageDraw  # noqa: E402

import harness.hookspecs  # noqa: E402
from harness import HarnessError, UsageError, cli  # noqa: E402
from harness.grid import load_grid  # noqa: E402
from harness.registry import build_plugin_manager  # noqa: E402
from harness.specs import TaskSuiteSpec, resolve_params  # noqa: E402
from harness.storage import file_sha256  # noqa: E402
from metaharness_plugins.algorithms.maml import MAML, FOMAMLHparams  # noqa: E402
from metaharness_plugins.backends.cpu import CPUBackend  # noqa: E402
from metaharness_plugins.fewshot import omniglot_download  # noqa: E402
from metaharness_plugins.fewshot.omniglot_archives import (  # noqa: E402  # noqa: E402
    alphabet_splits,
    cache_key,
    load_characters,
    split_characters,
    standard_splits,
    survey_archives,
)
from metaharness_plugins.fewshot.suite import SPLITS  # noqa: E402
from metaharness_plugins.suites import omniglot  # noqa: E402
from metaharness_plugins.suites.omniglot import (  # noqa: E402
    OmniglotConfig,
    OmniglotSuite,
    check_data,
)

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "omniglot"
ARCHIVES = OmniglotConfig().archives


@pytest.fixture(scope="module")
def first_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[OmniglotSuite, float]:
    """The suite built from the archives into an empty cache directory, and how long that took."""
    if not all((DATA / name).is_file() for name in ARCHIVES):
        pytest.skip(f"the Omniglot small background sets ({', '.join(ARCHIVES)}) are not in {DATA}")
    cache_dir = tmp_path_factory.mktemp("omniglot-cache")
    start = time.perf_counter()
    suite = OmniglotSuite(OmniglotConfig(data_root=str(DATA), cache_dir=str(cache_dir)))
    return suite, time.perf_counter() - start


@pytest.fixture(scope="module")
def cache_dir(first_build: tuple[OmniglotSuite, float]) -> Path:
    """The cache directory `first_build` filled: later constructions in a test load from it."""
    return first_build[0].data.cache_file.parent


@pytest.fixture(scope="module")
def suite(first_build: tuple[OmniglotSuite, float]) -> OmniglotSuite:
    return first_build[0]


def make_suite(cache_dir: Path, **options: object) -> OmniglotSuite:
    return OmniglotSuite(OmniglotConfig(data_root=str(DATA), cache_dir=str(cache_dir), **options))


@pytest.fixture(scope="module")
def lookup(suite: OmniglotSuite) -> dict[bytes, tuple[int, int]]:
    """uint8 image bytes -> (character index, drawing index); every drawing of the small sets differs."""
    images = suite.data.images
    characters, drawings = images.shape[:2]
    table = {images[c, d].numpy().tobytes(): (c, d) for c in range(characters) for d in range(drawings)}
    assert len(table) == images.shape[0] * images.shape[1]
    return table


def trace(x: torch.Tensor, lookup: dict[bytes, tuple[int, int]]) -> list[tuple[int, int]]:
    """(character, drawing) of each float image of x [N, 1, H, W], found through its uint8 pixels."""
    pixels = (x * 255).round().to(torch.uint8)
    return [lookup[pixels[i, 0].numpy().tobytes()] for i in range(x.shape[0])]


def write_zip(path: Path, characters: dict[tuple[str, str], int], corrupt: str | None = None) -> Path:
    """A zip with Omniglot's layout `<name>/<Alphabet>/<character>/<id>_<drawer>.png`; the member whose
    name ends with `corrupt` holds bytes that are not a PNG."""
    with zipfile.ZipFile(path, "w") as archive:
        for n, ((alphabet, character), drawings) in enumerate(sorted(characters.items())):
            for d in range(drawings):
                member = f"{path.stem}/{alphabet}/{character}/{n:04d}_{d + 1:02d}.png"
                image = Image.new("1", (105, 105), 1)
                ImageDraw.Draw(image).line((10 + 4 * d, 10, 95 - 3 * n, 95), fill=0, width=6)
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                data = b"not a png at all" if corrupt and member.endswith(corrupt) else buffer.getvalue()
                archive.writestr(member, data)
    return path


# --- loading and the cache ---------------------------------------------------------------------------


def test_loads_the_real_small_sets(suite: OmniglotSuite) -> None:
    images = suite.data.images
    assert images.dtype == torch.uint8 and images.shape == (242, 20, 28, 28)
    assert len(set(suite.data.characters)) == 242  # Greek and Latin, in both archives, counted once
    assert len({alphabet for alphabet, _ in suite.data.characters}) == 8
    # Inverted: strokes bright on a dark background, so the mean pixel is low and both ends are used.
    assert float(images.float().mean()) / 255 < 0.15
    assert int(images.min()) == 0 and int(images.max()) == 255
    assert float((images[:, :, 0, :].float()).mean()) < 5  # the top row is background almost everywhere
    sums = dict(line.split()[::-1] for line in (DATA / "SHA256SUMS").read_text().splitlines())
    assert [sums[Path(p).name] == h for p, h in suite.data.archives] == [True, True]


def test_alphabet_splits_are_disjoint_and_documented(suite: OmniglotSuite) -> None:
    splits = suite.alphabets
    assert splits == {
        "train": ("Balinese", "Early_Aramaic", "Japanese_(katakana)", "Korean", "Tagalog"),
        "val": ("Latin",),
        "test": ("Greek", "Sanskrit"),
    }
    assert alphabet_splits(list(reversed(sum(splits.values(), ())))) == splits  # order does not matter
    described = suite.describe()["splits"]
    assert {s: described[s]["characters"] for s in splits} == {"train": 150, "val": 26, "test": 66}
    assert {s: described[s]["images"] for s in splits} == {"train": 3000, "val": 520, "test": 1320}
    chars = {s: set(suite.classes[s][0].tolist()) for s in splits}
    assert not chars["train"] & chars["val"] and not chars["train"] & chars["test"]
    assert not chars["val"] & chars["test"]
    assert len(chars["train"] | chars["val"] | chars["test"]) == 242
    assert alphabet_splits([f"A{i:02d}" for i in range(16)])["test"] == ("A02", "A06", "A10", "A14")


def test_second_construction_loads_the_cache(first_build: tuple[OmniglotSuite, float]) -> None:
    suite, decode_s = first_build
    cache_dir = suite.data.cache_file.parent
    assert not suite.data.from_cache and suite.data.cache_file.is_file()
    start = time.perf_counter()
    again = make_suite(cache_dir)
    cached_s = time.perf_counter() - start
    assert again.data.from_cache and again.data.cache_file == suite.data.cache_file
    assert torch.equal(again.data.images, suite.data.images)
    assert again.data.characters == suite.data.characters
    assert cached_s < decode_s
    assert sorted(p.name for p in cache_dir.iterdir()) == [suite.data.cache_file.name]  # no temporary left
    assert suite.describe()["cache_file"] == str(suite.data.cache_file)


def test_cache_key_follows_archive_bytes_and_image_size(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "tiny.zip", {("Alpha", "character01"): 20, ("Beta", "character01"): 20})
    changed = tmp_path / "changed.zip"
    shutil.copy(archive, changed)
    with open(changed, "ab") as handle:
        handle.write(b"\0")
    assert file_sha256(changed) != file_sha256(archive)
    assert cache_key([file_sha256(changed)], 28) != cache_key([file_sha256(archive)], 28)
    small = load_characters([archive], 8, tmp_path / "cache")
    large = load_characters([archive], 12, tmp_path / "cache")
    assert small.cache_file != large.cache_file and small.cache_file.is_file() and large.cache_file.is_file()
    assert small.images.shape == (2, 20, 8, 8) and large.images.shape == (2, 20, 12, 12)
    assert load_characters([archive], 8, tmp_path / "cache").from_cache
    small.cache_file.write_bytes(b"truncated")  # a damaged cache file is decoded again, not trusted
    assert not load_characters([archive], 8, tmp_path / "cache").from_cache


# --- episodes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_episodes_are_made_of_distinct_drawings_of_distinct_split_characters(
    suite: OmniglotSuite, lookup: dict[bytes, tuple[int, int]], split: str
) -> None:
    batch = suite.sample(20, torch.Generator().manual_seed(3), split)
    assert batch.support_x.shape == (20, 5, 1, 28, 28) and batch.query_x.shape == (20, 75, 1, 28, 28)
    assert batch.support_x.dtype == batch.query_x.dtype == torch.float32
    assert batch.support_y.dtype == batch.query_y.dtype == torch.int64
    assert 0.0 <= float(batch.query_x.min()) and float(batch.query_x.max()) <= 1.0
    allowed = set(suite.classes[split][0].tolist())
    for i in range(batch.num_tasks):
        support, query = trace(batch.support_x[i], lookup), trace(batch.query_x[i], lookup)
        labels = batch.support_y[i].tolist() + batch.query_y[i].tolist()
        assert sorted(batch.support_y[i].tolist()) == list(range(5))  # one shot of each label
        assert sorted(batch.query_y[i].tolist()) == sorted(list(range(5)) * 15)
        by_label: dict[int, set[tuple[int, int]]] = {}
        for label, drawing in zip(labels, support + query):
            by_label.setdefault(label, set()).add(drawing)
        assert all(len(drawings) == 16 for drawings in by_label.values())  # 1 + 15, all distinct
        characters = [{c for c, _ in drawings} for drawings in by_label.values()]
        assert all(len(c) == 1 for c in characters) and len(set().union(*characters)) == 5
        assert set().union(*characters) <= allowed


def test_same_seed_same_episodes_different_seed_different(suite: OmniglotSuite) -> None:
    a = suite.sample(6, torch.Generator().manual_seed(11), "train")
    b = suite.sample(6, torch.Generator().manual_seed(11), "train")
    c = suite.sample(6, torch.Generator().manual_seed(12), "train")
    for name in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.support_x, c.support_x) and not torch.equal(a.query_x, c.query_x)


def test_classes_are_drawn_uniformly_and_relabelled(suite: OmniglotSuite, lookup: dict) -> None:
    batch = suite.sample(300, torch.Generator().manual_seed(5), "val")
    first = [trace(batch.support_x[i, :1], lookup)[0][0] for i in range(300)]
    counts = torch.bincount(torch.tensor(first), minlength=len(suite.data.images))[suite.classes["val"][0]]
    assert int((counts > 0).sum()) >= 24  # label 0 lands on (nearly) every one of Latin's 26 letters
    assert int(counts.max()) < 30  # expected 300 / 26 = 11.5 per letter


def test_sampling_is_fast(suite: OmniglotSuite) -> None:
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(50):
        suite.sample(4, generator, "train")
    assert time.perf_counter() - start < 2.0  # measured about 0.04 s: indexing, no decoding


def test_rotations_are_new_classes_of_the_train_split_only(cache_dir: Path, lookup: dict) -> None:
    rotated = make_suite(cache_dir, rotations=True, ways=20)
    assert [len(rotated.classes[s][0]) for s in ("train", "val", "test")] == [600, 26, 66]
    batch = rotated.sample(10, torch.Generator().manual_seed(0), "train")
    turned = 0
    for x in batch.support_x.flatten(0, 1):
        pixels = (x[0] * 255).round().to(torch.uint8)
        matches = [k for k in range(4) if torch.rot90(pixels, -k).numpy().tobytes() in lookup]
        assert len(matches) == 1
        turned += matches[0] != 0
    assert 100 <= turned <= 190  # 3 of 4 classes are rotated: about 150 of 200 images
    test = rotated.sample(5, torch.Generator().manual_seed(0), "test")
    assert all(len(trace(test.query_x[i], lookup)) == 300 for i in range(5))  # unrotated, all traceable


# --- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ways": 0}, "ways must be a positive integer, got 0"),
        ({"shots": -1}, "shots must be a positive integer, got -1"),
        ({"query": 0}, "query must be a positive integer, got 0"),
        ({"image_size": 4}, "image_size must be from 8 to 512 pixels, got 4"),
        ({"protocol": "vinyals"}, "protocol must be one of alphabet, standard, got 'vinyals'"),
        ({"model": "resnet12"}, "model must be one of conv4, conv4-nopool, mlp, got 'resnet12'"),
        ({"image_size": 14}, "model 'conv4' needs image_size >= 16"),
        ({"protocol": "standard", "train_characters": 0}, "train_characters must be a positive integer"),
        ({"protocol": "standard", "val_characters": 1200}, r"val_characters \(1200\) must be fewer than "
         r"train_characters \(1200\)"),
        ({"train_characters": 1000}, "train_characters and val_characters size the 'standard' protocol"),
        ({"download": "always"}, "download must be one of missing, replace, never, got 'always'"),
        ({"base_url": "ftp://example.org/"}, "base_url must be an http/https/file URL"),
        ({"archives": ["../images_background.zip"]}, "archives must be file names inside the data folder"),
    ],
)
def test_config_rejects_impossible_settings(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OmniglotConfig(**options)


def test_small_images_need_the_nopool_model() -> None:
    assert OmniglotConfig(image_size=8, model="conv4-nopool").image_size == 8
    assert OmniglotConfig(image_size=16).model == "conv4"


def test_too_many_ways_or_images_per_class(cache_dir: Path) -> None:
    with pytest.raises(UsageError, match=r"30-way episodes need 30 classes, but the val split \(alphabets: "
                       r"Latin\) has 26"):
        make_suite(cache_dir, ways=30)
    with pytest.raises(UsageError, match=r"shots \+ query = 5 \+ 16 = 21 images per class, but each Omniglot "
                       r"character has 20 drawings"):
        make_suite(cache_dir, shots=5, query=16)
    biggest = make_suite(cache_dir, ways=20, shots=5, query=15)  # 20-way 5-shot fits every split
    assert biggest.sample(1, torch.Generator().manual_seed(0), "val").query_x.shape[1] == 300


def test_missing_archives_name_the_files_and_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UsageError) as info:
        OmniglotSuite(OmniglotConfig(data_root=str(tmp_path), cache_dir=str(tmp_path)))
    assert str(tmp_path) in str(info.value) and all(name in str(info.value) for name in ARCHIVES)
    monkeypatch.delenv("HARNESS_DATA", raising=False)
    with pytest.raises(UsageError, match=r"set the suite option data_root or \$HARNESS_DATA"):
        OmniglotSuite(OmniglotConfig(cache_dir=str(tmp_path)))


def test_harness_data_names_the_data_root_or_the_folder(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for root in (DATA.parent, DATA):
        monkeypatch.setenv("HARNESS_DATA", str(root))
        assert len(OmniglotSuite(OmniglotConfig(cache_dir=str(cache_dir))).data.characters) == 242


def test_corrupt_png_names_the_member_and_the_archive(tmp_path: Path) -> None:
    characters = {("Alpha", "character01"): 20, ("Alpha", "character02"): 20}
    archive = write_zip(tmp_path / "broken.zip", characters, corrupt="character02/0001_07.png")
    member = r"broken/Alpha/character02/0001_07\.png"
    with pytest.raises(HarnessError, match=rf"cannot decode image {member} in archive .*broken\.zip"):
        load_characters([archive], 28, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # nothing cached from a broken archive


def test_conflicting_copies_of_a_character_are_rejected(tmp_path: Path) -> None:
    one = write_zip(tmp_path / "one.zip", {("Alpha", "character01"): 20})
    other = write_zip(tmp_path / "other.zip", {("Alpha", "character01"): 19})
    with pytest.raises(HarnessError, match="Omniglot character Alpha/character01 differs between"):
        load_characters([one, other], 8, tmp_path / "cache")


# --- model, loss, metric, registration -----------------------------------------------------------------


def test_conv4_is_the_papers_backbone_and_works_under_vmap(suite: OmniglotSuite, cache_dir: Path) -> None:
    torch.manual_seed(0)
    model = suite.build_model()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [(64, (3, 3), (1, 1))] * 4
    assert len(norms) == 4 and not any(n.track_running_stats for n in norms) and list(model.buffers()) == []
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 4
    assert (model[-1].in_features, model[-1].out_features) == (64, 5)
    batch = suite.sample(3, torch.Generator().manual_seed(0), "train")
    assert model(batch.query_x[0]).shape == (75, 5)
    params = dict(model.named_parameters())
    batched = vmap(lambda x: functional_call(model, params, (x,)))(batch.query_x)
    looped = torch.stack([model(batch.query_x[i]) for i in range(3)])
    assert torch.allclose(batched, looped, atol=1e-5)  # batch statistics per task, not across tasks
    inner = grad(lambda p, x, y: suite.loss(functional_call(model, p, (x,)), y))
    grads = vmap(inner, in_dims=(None, 0, 0))(params, batch.support_x, batch.support_y)
    assert all(grads[k].shape == (3, *p.shape) for k, p in params.items())
    nopool = make_suite(cache_dir, model="conv4-nopool").build_model()
    assert nopool(batch.query_x[0]).shape == (75, 5) and not any(isinstance(m, nn.MaxPool2d) for m in nopool)


def test_loss_is_cross_entropy_and_metric_is_accuracy(suite: OmniglotSuite) -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    target = torch.tensor([0, 1, 2, 1])
    assert suite.metric(logits, target).shape == ()
    assert float(suite.metric(logits, target)) == pytest.approx(0.5)
    assert float(suite.loss(logits, target)) == pytest.approx(float(nn.CrossEntropyLoss()(logits, target)))
    assert (suite.metric_name, suite.higher_is_better) == ("accuracy", True)


def test_registers_through_pluggy_and_grid_overrides_resolve() -> None:
    manager = pluggy.PluginManager("harness")
    manager.add_hookspecs(harness.hookspecs)
    manager.register(omniglot)
    specs = [spec for result in manager.hook.harness_register_task_suites() for spec in result]
    assert [(s.name, s.task_kind, s.config, s.requires) for s in specs] == [
        ("omniglot", "classification", OmniglotConfig, ("PIL",))
    ]
    assert isinstance(specs[0], TaskSuiteSpec) and specs[0].paper and specs[0].description
    config = resolve_params(OmniglotConfig, {"ways": 20, "archives": ["a.zip"]}, "suite 'omniglot'")
    assert config.ways == 20 and config.archives == ("a.zip",)
    with pytest.raises(UsageError, match="suite 'omniglot': ways must be a positive integer, got 0"):
        resolve_params(OmniglotConfig, {"ways": 0}, "suite 'omniglot'")


# --- learning ------------------------------------------------------------------------------------------


def test_first_order_maml_learns_5_way_1_shot(cache_dir: Path) -> None:
    """60 meta-iterations of first-order MAML (inner_lr 0.4, meta-batch 4: the paper's Omniglot
    settings except meta_lr, raised from 0.001 to learn in a few iterations) lift test accuracy after
    one adaptation step from chance (0.2) to 0.41 (0.32-0.42 over three seeds), in about 15 s on one
    thread. Five query images per class rather than 15 make training three times cheaper."""
    suite = make_suite(cache_dir, query=5)
    torch.manual_seed(0)
    hparams = FOMAMLHparams(inner_lr=0.4, meta_lr=0.003, meta_batch_size=4, test_steps=1, vmap_tasks=False)
    algo = MAML(hparams, suite.build_model(), suite, CPUBackend())
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        algo.meta_train_step(suite.sample(4, generator, "train"))
    test = suite.sample(50, torch.Generator().manual_seed(99), "test")
    accuracy = torch.zeros(2)
    with torch.no_grad():
        for i in range(test.num_tasks):
            states = algo.adapt(test.support_x[i], test.support_y[i], 1)
            query_x, query_y = test.query_x[i], test.query_y[i]
            accuracy += torch.stack([suite.metric(algo.predict(s, query_x), query_y) for s in states])
    accuracy /= test.num_tasks
    assert float(accuracy[1]) > 0.3, f"accuracy after one step {float(accuracy[1]):.3f}, chance is 0.2"
    assert float(accuracy[1]) > float(accuracy[0]) + 0.1


# --- the fully connected model -------------------------------------------------------------------------


def test_mlp_is_maml_fully_connected_network_with_batch_statistics(cache_dir: Path) -> None:
    suite = make_suite(cache_dir, model="mlp", ways=20)
    torch.manual_seed(0)
    model = suite.build_model()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 256), (256, 128), (128, 64), (64, 64),
                                                                  (64, 20)]
    assert [n.num_features for n in norms] == [256, 128, 64, 64]
    assert not any(n.track_running_stats for n in norms) and list(model.buffers()) == []
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 4 and isinstance(model[-1], nn.Linear)
    batch = suite.sample(3, torch.Generator().manual_seed(0), "train")
    params = dict(model.named_parameters())
    batched = vmap(lambda x: functional_call(model, params, (x,)))(batch.query_x)
    looped = torch.stack([model(batch.query_x[i]) for i in range(3)])
    assert batched.shape == (3, 300, 20) and torch.allclose(batched, looped, atol=1e-5)
    # Batch statistics: the same image gets other logits beside other images (transductive), in eval mode too.
    model.eval()
    alone, among = model(batch.query_x[0][:2]), model(batch.query_x[0][:20])
    assert not torch.allclose(alone[0], among[0])
    described = suite.describe()["model"]
    assert described["name"] == "mlp" and "784-256-128-64-64-20" in described["architecture"]
    assert "batch statistics only" in described["batch_norm"]
    assert "max-pool" in make_suite(cache_dir).describe()["model"]["architecture"]


def test_first_order_maml_learns_with_the_mlp(cache_dir: Path) -> None:
    """The fully connected network learns too: 60 meta-iterations of first-order MAML (inner_lr 0.4,
    meta_lr 0.003, meta-batch 8) lift 5-way 1-shot test accuracy after one step from chance (0.2) to 0.50
    (0.48-0.50 over three seeds), in about 3 s on one thread."""
    suite = make_suite(cache_dir, model="mlp", query=5)
    torch.manual_seed(0)
    hparams = FOMAMLHparams(inner_lr=0.4, meta_lr=0.003, meta_batch_size=8, test_steps=1)
    algo = MAML(hparams, suite.build_model(), suite, CPUBackend())
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        algo.meta_train_step(suite.sample(8, generator, "train"))
    test = suite.sample(100, torch.Generator().manual_seed(99), "test")
    accuracy = torch.zeros(2)
    with torch.no_grad():
        for i in range(test.num_tasks):
            states = algo.adapt(test.support_x[i], test.support_y[i], 1)
            query_x, query_y = test.query_x[i], test.query_y[i]
            accuracy += torch.stack([suite.metric(algo.predict(s, query_x), query_y) for s in states])
    accuracy /= test.num_tasks
    assert float(accuracy[1]) > 0.4, f"accuracy after one step {float(accuracy[1]):.3f}, chance is 0.2"
    assert float(accuracy[1]) > float(accuracy[0]) + 0.15


# --- the "standard" protocol on full-layout archives -----------------------------------------------------

#: Alphabets copied from the small sets into archives with the official names: 90 background characters
#: (24 + 40 + 26) and 59 evaluation ones (42 + 17).
FAKE_BACKGROUND = ("images_background_small1.zip", ("Greek", "Korean", "Latin"))
FAKE_EVALUATION = ("images_background_small2.zip", ("Sanskrit", "Tagalog"))


def fabricate_full_archives(folder: Path, reverse: bool = False) -> tuple[Path, Path]:
    """images_background.zip and images_evaluation.zip with the official layout
    `<name>/<Alphabet>/characterNN/<id>_<drawer>.png`, made of the small sets' real PNG bytes;
    `reverse` writes the members in reverse order (the suite must not depend on it)."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for name, (source, alphabets) in zip(("images_background", "images_evaluation"),
                                         (FAKE_BACKGROUND, FAKE_EVALUATION)):
        with zipfile.ZipFile(DATA / source) as small, zipfile.ZipFile(folder / f"{name}.zip", "w") as full:
            members = [i for i in small.infolist() if i.filename.endswith(".png")
                       and i.filename.split("/")[1] in alphabets]
            for info in reversed(members) if reverse else members:
                full.writestr(name + "/" + info.filename.split("/", 1)[1], small.read(info))
        made.append(folder / f"{name}.zip")
    return made[0], made[1]


@pytest.fixture(scope="module")
def full_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not all((DATA / name).is_file() for name in ARCHIVES):
        pytest.skip(f"the Omniglot small background sets are not in {DATA}")
    folder = tmp_path_factory.mktemp("full-layout")
    fabricate_full_archives(folder)
    return folder


def standard_suite(folder: Path, cache_dir: Path, **options: object) -> OmniglotSuite:
    """The standard protocol on fabricated archives (their md5 is not the published one: not verified)."""
    options = {"train_characters": 100, "val_characters": 20, **options}
    return OmniglotSuite(OmniglotConfig(protocol="standard", data_root=str(folder), cache_dir=str(cache_dir),
                                        verify_md5=False, download="never", **options))


@pytest.fixture(scope="module")
def standard(full_layout: Path, tmp_path_factory: pytest.TempPathFactory) -> OmniglotSuite:
    return standard_suite(full_layout, tmp_path_factory.mktemp("standard-cache"))


def letters(alphabet: str, first: int, last: int) -> list[tuple[str, str]]:
    return [(alphabet, f"character{i:02d}") for i in range(first, last + 1)]


def test_standard_split_takes_background_then_evaluation_in_sorted_order(standard: OmniglotSuite) -> None:
    assert standard.config.archives == ("images_background.zip", "images_evaluation.zip")
    assert standard.config.rotations is True  # on by default in this protocol
    assert len(standard.data.characters) == 149
    # 100 training characters, the last 20 of them validating: Greek (24), Korean (40), Latin 1-16 train,
    # Latin 17-26 and Sanskrit 1-10 validate, the rest of Sanskrit and all of Tagalog test.
    train = letters("Greek", 1, 24) + letters("Korean", 1, 40) + letters("Latin", 1, 16)
    val = letters("Latin", 17, 26) + letters("Sanskrit", 1, 10)
    test = letters("Sanskrit", 11, 42) + letters("Tagalog", 1, 17)
    assert standard.characters == {"train": tuple(train), "val": tuple(val), "test": tuple(test)}
    described = standard.describe()
    assert {s: (d["characters"], d["classes"], d["images"]) for s, d in described["splits"].items()} == {
        "train": (80, 320, 1600), "val": (20, 20, 400), "test": (49, 49, 980)}
    assert described["protocol"] == "standard" and described["rotations"] is True
    indices = {s: set(standard.classes[s][0].tolist()) for s in SPLITS}
    assert len(indices["train"]) == 80 and not indices["train"] & indices["val"]
    assert not indices["train"] & indices["test"] and not indices["val"] & indices["test"]
    assert [standard.data.characters[i] for i in sorted(indices["val"])] == val


def test_standard_split_is_a_pure_function_of_the_characters(standard: OmniglotSuite, tmp_path: Path) -> None:
    fabricate_full_archives(tmp_path, reverse=True)  # the same characters, members in the other order
    survey = survey_archives([tmp_path / name for name in standard.config.archives])
    assert split_characters(standard.config, survey) == standard.characters
    # The papers' sizes on the full archives' shape: 964 background and 659 evaluation characters.
    ranks = {(f"B{i // 40:02d}", f"character{i % 40 + 1:02d}"): 0 for i in range(964)}
    ranks |= {(f"A{i // 40:02d}", f"character{i % 40 + 1:02d}"): 1 for i in range(659)}  # sort before B
    splits = standard_splits(dict(reversed(list(ranks.items()))))
    assert [len(splits[s]) for s in SPLITS] == [1100, 100, 423]
    assert all(ranks[c] == 0 for c in splits["train"][:964]) and all(ranks[c] == 1 for c in splits["test"])


def test_standard_rotations_are_classes_of_the_train_split_only(standard: OmniglotSuite, full_layout: Path,
                                                                tmp_path: Path) -> None:
    images = standard.data.images
    table = {images[c, d].numpy().tobytes(): c for c in range(len(images)) for d in range(images.shape[1])}
    chars, turns = standard.classes["train"]
    assert sorted(torch.bincount(turns).tolist()) == [80, 80, 80, 80]
    assert all(torch.equal(chars[turns == k], chars[turns == 0]) for k in range(4))
    seen_turns = set()
    batch = standard.sample(8, torch.Generator().manual_seed(1), "train")
    for x in batch.support_x.flatten(0, 1):
        pixels = (x[0] * 255).round().to(torch.uint8)
        turned = [torch.rot90(pixels, -k).numpy().tobytes() for k in range(4)]
        found = [(k, table[key]) for k, key in enumerate(turned) if key in table]
        assert len(found) == 1 and found[0][1] in set(chars.tolist())
        seen_turns.add(found[0][0])
    assert seen_turns == {0, 1, 2, 3}
    for split in ("val", "test"):
        allowed = set(standard.classes[split][0].tolist())
        episode = standard.sample(3, torch.Generator().manual_seed(2), split)
        pixels = (episode.query_x.flatten(0, 1)[:, 0] * 255).round().to(torch.uint8)
        assert {table[p.numpy().tobytes()] for p in pixels} <= allowed  # unrotated, from the split itself
    plain = standard_suite(full_layout, tmp_path, rotations=False)
    assert len(plain.classes["train"][0]) == 80


def test_standard_sizes_are_checked_against_the_data(full_layout: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"train_characters = 149 leaves no test characters: the archives "
                       r"hold 149 characters"):
        standard_suite(full_layout, tmp_path, train_characters=149)
    message = r"25-way episodes need 25 classes, but the val split \(20 characters\) has 20"
    with pytest.raises(UsageError, match=message):
        standard_suite(full_layout, tmp_path, ways=25)
    # The grid's check says the same before anything runs, from the archives' listings alone.
    config = OmniglotConfig(protocol="standard", data_root=str(full_layout), verify_md5=False, ways=25,
                            train_characters=100, val_characters=20)
    assert "25-way episodes need 25 classes, but the val split (20 characters) has 20" in check_data(config)
    config = OmniglotConfig(protocol="standard", data_root=str(full_layout), verify_md5=False,
                            train_characters=100, val_characters=20, shots=10, query=11)
    assert "shots + query = 10 + 11 = 21 images per class" in check_data(config)
    assert check_data(OmniglotConfig(protocol="standard", data_root=str(full_layout), verify_md5=False,
                                     train_characters=100, val_characters=20, ways=20)) == ""
    assert not list(tmp_path.glob("*.pt"))  # refused before any decoding


def test_archive_that_is_not_a_zip_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "images_background_small1.zip").write_bytes(b"not a zip")
    shutil.copy(DATA / "images_background_small2.zip", tmp_path)
    config = OmniglotConfig(data_root=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert "images_background_small1.zip is not a readable zip file" in check_data(config)
    with pytest.raises(HarnessError, match="images_background_small1.zip is not a readable zip file"):
        OmniglotSuite(config)


# --- the reproduction grid -------------------------------------------------------------------------------


def fabricate_listing(folder: Path) -> None:
    """Archives with the full sets' shape (964 background characters in 30 alphabets, 659 evaluation ones
    in 20, 20 drawings each) holding one real PNG everywhere: enough for the grid's check, which reads
    listings only."""
    with zipfile.ZipFile(DATA / ARCHIVES[0]) as small:
        png = small.read(next(n for n in small.namelist() if n.endswith(".png")))
    folder.mkdir(parents=True, exist_ok=True)
    for name, characters, alphabets in (("images_background", 964, 30), ("images_evaluation", 659, 20)):
        with zipfile.ZipFile(folder / f"{name}.zip", "w") as archive:
            for c in range(characters):
                for d in range(20):
                    member = f"{name}/{name[7]}{c % alphabets:02d}/character{c:04d}/{c:04d}_{d:02d}.png"
                    archive.writestr(member, png)


def test_paper_grid_lists_its_cells_with_the_papers_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    fabricate_listing(tmp_path / "omniglot")
    # These archives stand in for the official ones: their md5 replaces the published one for this test.
    for name in omniglot_download.PUBLISHED_MD5:
        digest = omniglot_download.file_md5(tmp_path / "omniglot" / name)
        monkeypatch.setitem(omniglot_download.PUBLISHED_MD5, name, digest)
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path))
    monkeypatch.setenv("HARNESS_DISABLE_PLUGIN_AUTOLOAD", "1")
    results = str(tmp_path / "results")
    assert cli.main(["run", "--grid", "omniglot-paper", "--dry-run", "--results", results]) == 0
    out = capsys.readouterr().out
    assert "grid 'omniglot-paper'" in out and "20 cells to consider, 0 skipped" in out
    assert not (tmp_path / "results").exists()
    grid = load_grid("omniglot-paper", build_plugin_manager(entry_points=False))
    cells = {(c.algorithm, *(dict(c.suite_config)[k] for k in ("ways", "shots"))): c for c in grid.cells}
    assert sorted({a for a, _, _ in cells}) == ["anil", "fomaml", "maml", "matchingnet", "protonet"]
    assert all((a, w, s) in cells for a in ("maml", "protonet") for w in (5, 20) for s in (1, 5))
    for (algorithm, ways, shots), cell in cells.items():
        config, hparams = dict(cell.suite_config), dict(cell.hparams)
        assert config["protocol"] == "standard" and cell.budget.iterations == 60000
        assert cell.backend != "" and cell.budget.test_episodes == 600
        if algorithm in ("maml", "fomaml", "anil"):
            paper = {5: (0.4, 1, 3, 32), 20: (0.1, 5, 5, 16)}[ways]
            names = ("inner_lr", "inner_steps", "test_steps", "meta_batch_size")
            assert tuple(hparams[k] for k in names) == paper
            assert config["model"] == "conv4-nopool"  # MAML's Omniglot network: strided convolutions
        else:
            assert hparams == {} and "model" not in config
        # Each cell carries its own configuration's published accuracy (ANIL reports 20-way only).
        published = {("maml", 5, 1): "98.7 ± 0.4", ("maml", 20, 5): "98.9 ± 0.2", ("fomaml", 20, 1): "89.4",
                      ("protonet", 5, 5): "99.7", ("matchingnet", 20, 1): "93.8", ("anil", 20, 1): "96.2 ± 0.5",
                      ("anil", 5, 1): ""}
        if (algorithm, ways, shots) in published:
            assert cell.reported == published[(algorithm, ways, shots)]
        assert bool(cell.reported) == ((algorithm, ways) != ("anil", 5))


# --- learn2learn's TaskDataset as the sampler ----------------------------------------------------------


def test_learn2learn_sampler_draws_valid_episodes_of_the_right_split(
    suite: OmniglotSuite, cache_dir: Path, lookup: dict[bytes, tuple[int, int]]
) -> None:
    l2l = OmniglotSuite(OmniglotConfig(sampler="learn2learn", ways=5, shots=2, query=3, rotations=True,
                                       cache_dir=str(cache_dir)))
    assert l2l.describe()["sampler"]["name"] == "learn2learn" and suite.describe()["sampler"] == {"name": "native"}
    batch = l2l.sample(6, torch.Generator().manual_seed(1), "test")
    again = l2l.sample(6, torch.Generator().manual_seed(1), "test")
    assert torch.equal(batch.support_x, again.support_x) and torch.equal(batch.query_x, again.query_x)
    assert batch.support_x.shape == (6, 10, 1, 28, 28) and batch.query_x.shape == (6, 15, 1, 28, 28)
    test_chars = set(l2l.classes["test"][0].tolist())
    for i in range(6):  # test episodes are unrotated, so every image is a drawing of a test character
        support, query = trace(batch.support_x[i], lookup), trace(batch.query_x[i], lookup)
        assert {c for c, _ in support + query} <= test_chars
        by_label: dict[int, set[int]] = {}
        for (c, d), y in zip(support + query, batch.support_y[i].tolist() + batch.query_y[i].tolist()):
            by_label.setdefault(y, set()).add(c)
        assert sorted(by_label) == list(range(5)) and all(len(v) == 1 for v in by_label.values())
        assert len(set(support) | set(query)) == 25  # no drawing twice in an episode
    train = l2l.sample(40, torch.Generator().manual_seed(2), "train")
    # Rotated classes reach the sampler: some training images are not drawings as stored.
    pixels = (train.support_x.flatten(0, 1) * 255).round().to(torch.uint8)
    unseen = sum(pixels[i, 0].numpy().tobytes() not in lookup for i in range(len(pixels)))
    assert unseen > 0


def test_unknown_sampler_is_an_error() -> None:
    with pytest.raises(ValueError, match="sampler must be one of native, learn2learn, got 'l2l'"):
        OmniglotConfig(sampler="l2l")
