"""The mini-ImageNet, tiered-ImageNet, CIFAR-FS and FC100 suites on tiny files fabricated in learn2learn's
formats: loading through learn2learn, the cache, splits, episodes traced back to their files, errors, the
conv4 and ResNet-12 models under vmap, and ResNet-12 with the native MAML and ProtoNets."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pluggy
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

pytest.importorskip("learn2learn", reason="the suites read the files with learn2learn (make learn2learn)")
import harness.hookspecs  # noqa: E402
from harness import HarnessError, UsageError, cli, split_classifier  # noqa: E402
from harness.specs import resolve_params  # noqa: E402
from metaharness_plugins.algorithms.maml import MAML, MAMLHparams  # noqa: E402
from metaharness_plugins.algorithms.protonet import ProtoNet, ProtoNetHparams  # noqa: E402
from metaharness_plugins.backends.cpu import CPUBackend  # noqa: E402
from metaharness_plugins.fewshot.image_sets import IMAGE_SETS, ZENODO  # noqa: E402
from metaharness_plugins.suites import fewshot_images  # noqa: E402
from metaharness_plugins.suites.fewshot_images import (  # noqa: E402
    BATCH_NORM,
    CONFIGS,
    FewShotImagesSuite,
    MiniImageNetConfig,
    check_data,
)
from tests.fixtures.fewshot_images import COUNTS, WRITERS, Fabricated  # noqa: E402

NAMES = tuple(IMAGE_SETS)
SIZE = 16  # the fabricated images' side: the smallest the max-pooling models take


@pytest.fixture(scope="module")
def fabricated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Fabricated]:
    """The four datasets written once into a data root of this module (CIFAR-FS as the unzipped archive)."""
    root = tmp_path_factory.mktemp("data")
    return {name: write(root / name) for name, write in WRITERS.items()}


@pytest.fixture(scope="module")
def suites(fabricated: dict[str, Fabricated], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Each suite built once, 3-way 1-shot 2-query, converting the files into a fresh cache."""
    cache = tmp_path_factory.mktemp("cache")
    return {name: make(name, fabricated[name].root, cache) for name in NAMES}


def make(name: str, root: Path, cache: Path, **options: object) -> FewShotImagesSuite:
    settings = {"ways": 3, "shots": 1, "query": 2, "image_size": SIZE, **options}
    return FewShotImagesSuite(CONFIGS[name](data_root=str(root), cache_dir=str(cache), **settings))


def trace(images: torch.Tensor, lookup: dict[bytes, tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """(split, class, index) of each float image of `images` [n, 3, H, W], via the fabricator's lookup."""
    pixels = (images * 255).round().to(torch.uint8)
    return [lookup[p.numpy().tobytes()] for p in pixels]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- loading ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_split_holds_the_files_images_grouped_by_class(
    name: str, suites: dict, fabricated: dict
) -> None:
    suite, made = suites[name], fabricated[name]
    for split in ("train", "val", "test"):
        data = suite.splits[split]
        assert data.counts.tolist() == list(COUNTS[split]) and data.names == tuple(made.classes[split])
        assert data.images.shape == (sum(COUNTS[split]), 3, SIZE, SIZE) and data.images.dtype == torch.uint8
        for c, (name_c, count) in enumerate(zip(data.names, data.counts.tolist())):
            start = int(data.offsets[c])
            found = trace(data.images[start : start + count].float() / 255, made.lookup)
            assert sorted(found) == [(split, name_c, i) for i in range(count)]
        assert not data.from_cache and data.cache_file.is_file()
    described = suite.describe()
    assert described["loader"] == f"learn2learn.vision.datasets.{IMAGE_SETS[name].loader}"
    assert described["batch_norm"] == BATCH_NORM and described["model"].startswith("conv4 (32 filters")
    assert {s: described["splits"][s]["classes"] for s in COUNTS} == {s: len(c) for s, c in COUNTS.items()}
    assert described["splits"]["train"]["images_per_class"] == [6, 9]
    assert described["official_classes"] == dict(zip(("train", "val", "test"), IMAGE_SETS[name].classes))
    if name in ("mini-imagenet", "fc100"):  # one file per split: its own sha256
        (file,) = described["splits"]["val"]["files"]
        assert described["splits"]["val"]["sha256"] == sha256(made.root / file)


def test_cifar_fs_is_processed_by_learn2learn_and_checked_whole(suites: dict, fabricated: dict) -> None:
    root = fabricated["cifar-fs"].root / "cifarfs"
    assert sorted(p.name for p in (root / "processed").iterdir()) == ["test", "train", "val"]
    assert suites["cifar-fs"].describe()["splits"]["test"]["files"] == "cifarfs/processed/test/ (27 files)"
    copy = root.parent.parent / "cifar-fs-copy"
    shutil.copytree(root.parent, copy)
    shutil.rmtree(copy / "cifarfs/processed/val/lamp")  # as an interrupted copy would leave it
    with pytest.raises(HarnessError, match=r"processed/val/lamp is missing or does not hold the images of .*"
                       r"cifar100/data/lamp: an interrupted learn2learn processing\? Delete .*processed"):
        make("cifar-fs", copy, copy / "cache")
    shutil.rmtree(copy / "cifarfs/cifar100")  # the processed splits alone are enough
    shutil.copytree(root / "processed/val/lamp", copy / "cifarfs/processed/val/lamp")
    assert make("cifar-fs", copy, copy / "cache").splits["val"].counts.tolist() == [6, 7, 6]


def test_second_construction_memory_maps_the_cache(suites: dict, fabricated: dict) -> None:
    first = suites["tiered-imagenet"]
    cache = first.splits["train"].cache_file.parent
    again = make("tiered-imagenet", fabricated["tiered-imagenet"].root, cache)
    for split, data in again.splits.items():
        assert data.from_cache and data.cache_file == first.splits[split].cache_file
        assert torch.equal(data.images, first.splits[split].images)
        assert data.names == first.splits[split].names
    assert not any(p.suffix == ".tmp" for p in cache.iterdir())  # no temporary file left behind


def test_cache_follows_the_source_files_and_image_size(tmp_path: Path) -> None:
    made = WRITERS["mini-imagenet"](tmp_path / "data")
    cache = tmp_path / "cache"
    first = make("mini-imagenet", made.root, cache)
    train = made.root / "mini-imagenet-cache-train.pkl"
    os.utime(train, ns=(train.stat().st_atime_ns, train.stat().st_mtime_ns + 10**9))  # a replaced file
    second = make("mini-imagenet", made.root, cache)
    assert not second.splits["train"].from_cache and second.splits["val"].from_cache
    second.splits["val"].cache_file.write_bytes(b"truncated")  # a damaged cache file is converted again
    assert not make("mini-imagenet", made.root, cache).splits["val"].from_cache
    bigger = make("mini-imagenet", made.root, cache, image_size=24)
    assert bigger.splits["val"].images.shape == (19, 3, 24, 24)
    assert bigger.splits["val"].cache_file != first.splits["val"].cache_file
    assert bigger.sample(2, torch.Generator().manual_seed(0), "val").query_x.shape == (2, 6, 3, 24, 24)
    # Resizing is antialiased bilinear: a 16-pixel image blown up to 24 keeps its mean colour.
    mean_small = first.splits["val"].images.float().mean((2, 3))
    assert torch.allclose(bigger.splits["val"].images.float().mean((2, 3)), mean_small, atol=3.0)


# --- episodes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_episodes_are_distinct_images_of_distinct_classes_of_the_split(
    name: str, suites: dict, fabricated: dict
) -> None:
    suite, lookup = suites[name], fabricated[name].lookup
    for split in ("train", "val", "test"):
        batch = suite.sample(12, torch.Generator().manual_seed(1), split)
        assert batch.support_x.shape == (12, 3, 3, SIZE, SIZE)
        assert batch.query_x.shape == (12, 6, 3, SIZE, SIZE)
        assert batch.support_x.dtype == torch.float32 and batch.support_y.dtype == torch.int64
        assert 0.0 <= float(batch.query_x.min()) and float(batch.query_x.max()) <= 1.0
        assert batch.support_y.tolist() == [[0, 1, 2]] * 12
        assert batch.query_y.tolist() == [[0, 0, 1, 1, 2, 2]] * 12
        for i in range(12):
            images = trace(batch.support_x[i], lookup) + trace(batch.query_x[i], lookup)
            labels = batch.support_y[i].tolist() + batch.query_y[i].tolist()
            assert len(set(images)) == 9 and {s for s, _, _ in images} == {split}
            classes = {label: {c for (_, c, _), y in zip(images, labels) if y == label} for label in range(3)}
            assert all(len(c) == 1 for c in classes.values()) and len(set().union(*classes.values())) == 3


def test_uneven_classes_reach_every_image_and_only_their_own(suites: dict, fabricated: dict) -> None:
    """Classes of 6 to 9 images: every image of every class turns up, none from past a class's end."""
    suite = make("tiered-imagenet", fabricated["tiered-imagenet"].root,
                 suites["tiered-imagenet"].splits["train"].cache_file.parent, shots=2, query=4)
    batch = suite.sample(80, torch.Generator().manual_seed(2), "train")
    seen = set(trace(batch.support_x.flatten(0, 1), fabricated["tiered-imagenet"].lookup))
    seen |= set(trace(batch.query_x.flatten(0, 1), fabricated["tiered-imagenet"].lookup))
    names = fabricated["tiered-imagenet"].classes["train"]
    assert seen == {("train", c, i) for c, n in zip(names, COUNTS["train"]) for i in range(n)}


def test_learn2learn_sampler_draws_valid_episodes_from_the_same_uneven_classes(fabricated: dict) -> None:
    made = fabricated["tiered-imagenet"]
    suite = make("tiered-imagenet", made.root, made.root / "cache-l2l", sampler="learn2learn", shots=2, query=4)
    assert suite.describe()["sampler"]["name"] == "learn2learn"
    batch = suite.sample(80, torch.Generator().manual_seed(2), "train")
    again = suite.sample(80, torch.Generator().manual_seed(2), "train")
    assert torch.equal(batch.support_x, again.support_x) and torch.equal(batch.query_y, again.query_y)
    assert batch.support_y.tolist() == [[0, 0, 1, 1, 2, 2]] * 80
    seen = set()
    for i in range(80):
        images = trace(batch.support_x[i], made.lookup) + trace(batch.query_x[i], made.lookup)
        labels = batch.support_y[i].tolist() + batch.query_y[i].tolist()
        assert len(set(images)) == 18 and {s for s, _, _ in images} == {"train"}
        assert all(len({c for (_, c, _), y in zip(images, labels) if y == label}) == 1 for label in range(3))
        seen |= set(images)
    names = made.classes["train"]
    assert seen == {("train", c, i) for c, n in zip(names, COUNTS["train"]) for i in range(n)}


def test_same_seed_same_episodes_different_seed_different(suites: dict, fabricated: dict) -> None:
    suite = suites["fc100"]
    rebuilt = make("fc100", fabricated["fc100"].root, suite.splits["train"].cache_file.parent)
    a = suite.sample(5, torch.Generator().manual_seed(11), "train")
    b = rebuilt.sample(5, torch.Generator().manual_seed(11), "train")
    c = suite.sample(5, torch.Generator().manual_seed(12), "train")
    for name in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.support_x, c.support_x) and not torch.equal(a.query_x, c.query_x)


# --- errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_missing_files_name_the_folder_the_files_and_where_to_get_them(name: str, tmp_path: Path) -> None:
    config = CONFIGS[name](data_root=str(tmp_path))
    with pytest.raises(UsageError) as info:
        FewShotImagesSuite(config)
    message = str(info.value)
    assert check_data(config) == message and str(tmp_path) in message
    expected = [f for mode in ("train", "validation", "test") for f in IMAGE_SETS[name].files(mode)]
    assert all(f in message for f in expected) and ZENODO in message and "nothing is downloaded" in message
    assert not list(tmp_path.iterdir())  # learn2learn never ran: it would have made folders or downloaded


def test_missing_files_under_harness_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path))
    message = check_data(MiniImageNetConfig())
    expected = ("mini-imagenet-cache-train.pkl, mini-imagenet-cache-validation.pkl, "
                "mini-imagenet-cache-test.pkl")
    assert f"not found in {tmp_path / 'mini-imagenet'} or {tmp_path}: expected {expected} there" in message
    (tmp_path / "mini-imagenet").mkdir()
    (tmp_path / "mini-imagenet" / "mini-imagenet-cache-train.pkl").write_bytes(b"")
    assert f"({tmp_path / 'mini-imagenet'} lacks mini-imagenet-cache-validation.pkl, " in check_data(
        MiniImageNetConfig())
    monkeypatch.delenv("HARNESS_DATA")
    assert check_data(MiniImageNetConfig()).startswith(
        "no mini-ImageNet data directory: set the suite option data_root or $HARNESS_DATA (it, or its "
        "mini-imagenet/ subfolder, must hold mini-imagenet-cache-train.pkl")


def test_harness_data_or_its_subfolder(
    fabricated: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$HARNESS_DATA may be the folder itself or hold it as <suite>/ (the fabricator wrote fc100/)."""
    for base in (fabricated["fc100"].root.parent, fabricated["fc100"].root):
        monkeypatch.setenv("HARNESS_DATA", str(base))
        assert check_data(CONFIGS["fc100"]()) == ""
        suite = FewShotImagesSuite(CONFIGS["fc100"](ways=3, query=2, cache_dir=str(tmp_path)))
        assert suite.root == fabricated["fc100"].root and suite.splits["val"].images.shape[-1] == 32


def test_too_many_ways_or_images_per_class(suites: dict, fabricated: dict) -> None:
    root, cache = fabricated["mini-imagenet"].root, suites["mini-imagenet"].splits["val"].cache_file.parent
    with pytest.raises(UsageError, match="4-way episodes need 4 classes, but the mini-ImageNet val split "
                       "has 3"):
        make("mini-imagenet", root, cache, ways=4)
    with pytest.raises(UsageError, match=r"shots \+ query = 2 \+ 5 = 7 images per class, but class "
                       r"n00000001 of the mini-ImageNet train split has 6"):
        make("mini-imagenet", root, cache, shots=2, query=5)
    fits = make("mini-imagenet", root, cache, shots=1, query=5)  # 6 images: the smallest class's all
    assert fits.sample(1, torch.Generator(), "val").query_x.shape[1] == 15


def test_corrupt_files_name_the_split_the_file_and_the_cause(tmp_path: Path) -> None:
    mini = WRITERS["mini-imagenet"](tmp_path / "mini")
    train = mini.root / "mini-imagenet-cache-train.pkl"
    train.write_bytes(train.read_bytes()[:200])
    with pytest.raises(HarnessError, match=r"cannot read the mini-ImageNet train split \(mini-imagenet-cache-"
                       r"train\.pkl in .*mini\) with learn2learn's MiniImagenet: .*truncated or not the "
                       r"official one"):
        make("mini-imagenet", mini.root, tmp_path / "cache")
    tiered = WRITERS["tiered-imagenet"](tmp_path / "tiered")
    images = tiered.root / "tiered-imagenet" / "val_images_png.pkl"
    import pickle

    encoded = pickle.loads(images.read_bytes())
    encoded[4] = encoded[4][:40]  # a PNG cut short
    images.write_bytes(pickle.dumps(encoded))
    with pytest.raises(HarnessError, match=r"cannot decode tiered-ImageNet val split \(tiered-imagenet/"
                       r"val_images_png\.pkl, tiered-imagenet/val_labels\.pkl in .*\) image 4: "):
        make("tiered-imagenet", tiered.root, tmp_path / "cache")
    fc100 = WRITERS["fc100"](tmp_path / "fc100")
    test = fc100.root / "FC100_test.pickle"
    archive = pickle.loads(test.read_bytes(), encoding="latin1")
    archive["labels"] = archive["labels"][:-1]
    test.write_bytes(pickle.dumps(archive, protocol=2))
    with pytest.raises(HarnessError, match=r"FC100 test split \(FC100_test\.pickle in .*\): 27 images but 26 "
                       "labels"):
        make("fc100", fc100.root, tmp_path / "cache")
    # Only the splits read before the damaged one were cached.
    cached = {p.name.rsplit("-", 2)[0] for p in (tmp_path / "cache").iterdir()}
    assert cached == {"tiered-imagenet-train", "fc100-train", "fc100-val"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ways": 0}, "ways must be a positive integer, got 0"),
        ({"query": -1}, "query must be a positive integer, got -1"),
        ({"image_size": 4}, "image_size must be from 8 to 512 pixels, got 4"),
        ({"model": "vgg"}, "model must be one of conv4, conv4-64, conv4-nopool, resnet12, got 'vgg'"),
        ({"image_size": 12, "model": "resnet12"}, "model 'resnet12' needs image_size >= 16"),
    ],
)
def test_config_rejects_impossible_settings(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MiniImageNetConfig(**options)


# --- models ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "filters", "features"),
    [("conv4", 32, 32), ("conv4-64", 64, 64), ("conv4-nopool", 32, 32), ("resnet12", None, 640)],
)
def test_models_use_batch_statistics_and_work_under_vmap(
    model: str, filters: int | None, features: int, suites: dict, fabricated: dict
) -> None:
    cache = suites["fc100"].splits["val"].cache_file.parent
    suite = make("fc100", fabricated["fc100"].root, cache, model=model)
    torch.manual_seed(0)
    net = suite.build_model()
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and not any(n.track_running_stats for n in norms) and list(net.buffers()) == []
    body, head = split_classifier(net, "test")
    assert (head.in_features, head.out_features) == (features, 3)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if filters is not None:
        assert [c.out_channels for c in convs] == [filters] * 4
        assert sum(isinstance(m, nn.MaxPool2d) for m in net) == (0 if model == "conv4-nopool" else 4)
    else:  # learn2learn's ResNet-12: 4 blocks of 3 convolutions and a 1x1 shortcut, MetaOptNet's widths
        assert len(convs) == 16 and sorted({c.out_channels for c in convs}) == [64, 160, 320, 640]
    assert suite.describe()["model"].startswith(model + " (")
    batch = suite.sample(3, torch.Generator().manual_seed(0), "train")
    params = dict(net.named_parameters())
    batched = vmap(lambda x: functional_call(net, params, (x,)))(batch.query_x)
    looped = torch.stack([net(batch.query_x[i]) for i in range(3)])
    assert batched.shape == (3, 6, 3) and torch.allclose(batched, looped, atol=1e-5)  # per-task statistics
    inner = grad(lambda p, x, y: suite.loss(functional_call(net, p, (x,)), y))
    grads = vmap(inner, in_dims=(None, 0, 0))(params, batch.support_x, batch.support_y)
    assert all(grads[k].shape == (3, *p.shape) for k, p in params.items())


@pytest.mark.parametrize("algorithm", ["maml", "protonet"])
def test_resnet12_runs_with_the_native_algorithms(algorithm: str, suites: dict, fabricated: dict) -> None:
    """One meta-train step of second-order MAML (tasks vectorised with vmap) and of ProtoNets on
    ResNet-12, then adaptation and prediction on a test episode."""
    suite = make("mini-imagenet", fabricated["mini-imagenet"].root,
                 suites["mini-imagenet"].splits["val"].cache_file.parent, model="resnet12")
    torch.manual_seed(0)
    if algorithm == "maml":
        algo = MAML(MAMLHparams(inner_lr=0.01, meta_batch_size=2, test_steps=1), suite.build_model(), suite,
                    CPUBackend())
    else:
        algo = ProtoNet(ProtoNetHparams(meta_batch_size=2), suite.build_model(), suite, CPUBackend())
    before = algo.state_dict()
    loss = algo.meta_train_step(suite.sample(2, torch.Generator().manual_seed(0), "train"))
    assert torch.isfinite(torch.tensor(loss)) and loss > 0
    after = algo.state_dict()
    assert sum(not torch.equal(before[k], after[k]) for k in before) > len(before) // 2
    test = suite.sample(1, torch.Generator().manual_seed(1), "test")
    with torch.no_grad():
        states = algo.adapt(test.support_x[0], test.support_y[0], algo.test_steps)
        logits = algo.predict(states[-1], test.query_x[0])
    assert logits.shape == (6, 3) and torch.isfinite(logits).all()


def test_loss_is_cross_entropy_and_metric_is_accuracy(suites: dict) -> None:
    suite = suites["cifar-fs"]
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    target = torch.tensor([0, 1, 2, 1])
    assert float(suite.metric(logits, target)) == pytest.approx(0.5)
    assert float(suite.loss(logits, target)) == pytest.approx(float(nn.CrossEntropyLoss()(logits, target)))
    assert (suite.metric_name, suite.higher_is_better) == ("accuracy", True)


# --- registration and the command line ------------------------------------------------------------------


def test_registers_four_suites_through_pluggy() -> None:
    manager = pluggy.PluginManager("harness")
    manager.add_hookspecs(harness.hookspecs)
    manager.register(fewshot_images)
    specs = [spec for result in manager.hook.harness_register_task_suites() for spec in result]
    assert [(s.name, s.config.dataset, s.task_kind, s.check) for s in specs] == [
        (name, name, "classification", check_data) for name in NAMES
    ]
    assert [resolve_params(s.config, {}, s.name).image_size for s in specs] == [84, 84, 32, 32]
    config = resolve_params(specs[2].config, {"ways": 20, "model": "resnet12"}, "suite 'cifar-fs'")
    assert (config.ways, config.model, config.image_size) == (20, "resnet12", 32)
    with pytest.raises(UsageError, match="suite 'fc100': model must be one of"):
        resolve_params(specs[3].config, {"model": "vgg"}, "suite 'fc100'")


def test_harness_run_without_the_files_stops_before_any_cell(
    registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    registered = [registry.suite(name) for name in NAMES]
    assert all(reg.available and reg.plugin == "fewshot_images" for reg in registered)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path))
    monkeypatch.setenv("HARNESS_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert cli.main(["run", "--suite", "mini-imagenet", "--algorithm", "protonet"]) == 2
    err = capsys.readouterr().err
    assert "suite 'mini-imagenet' cannot run here: mini-ImageNet files not found in" in err
    assert "mini-imagenet-cache-validation.pkl" in err and ZENODO in err
    assert list(tmp_path.iterdir()) == []  # no results, no leaderboards, no folders made by learn2learn
