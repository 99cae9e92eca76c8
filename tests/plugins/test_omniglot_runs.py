"""The Omniglot one-shot runs suite on runs written in the authors' format from the real small sets: the
fixture itself, strict parsing with errors before anything runs, episodes traced back to the drawings and
to class_labels.txt, the error-rate metric, and a short `harness run` that learns."""

from __future__ import annotations

import io
import json
import re
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("PIL", reason="the Omniglot suites decode PNG with Pillow (pip install pillow)")
from PIL import Image  # noqa: E402

from harness import UsageError  # noqa: E402
from harness.grid import load_grid  # noqa: E402
from metaharness_plugins.fewshot import omniglot_runs_build  # noqa: E402
from metaharness_plugins.fewshot.omniglot_runs_build import RunTruth, write_runs  # noqa: E402
from metaharness_plugins.fewshot.omniglot_runs_files import parse_class_labels, read_runs  # noqa: E402
from metaharness_plugins.suites.omniglot_runs import (  # noqa: E402
    OmniglotRunsConfig,
    OmniglotRunsSuite,
    background_splits,
    check_runs,
)
from tests.conftest import run_cli  # noqa: E402
from tests.plugins.helpers import DATA, require_omniglot  # noqa: E402

#: Meta-training reads small set 1 only; the runs come from the alphabets only small set 2 holds (Tagalog,
#: the third, has 17 characters: too few for a 20-way run).
TRAIN_ARCHIVE, RUNS_ARCHIVE = "images_background_small1.zip", "images_background_small2.zip"
RUN_ALPHABETS = ("Japanese_(katakana)", "Sanskrit")


def png_names(stem: str) -> list[str]:
    """classNN.png or itemNN.png for NN = 01 ... 20, the files of a run's training or test folder."""
    return [f"{stem}{k:02d}.png" for k in range(1, 21)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[RunTruth]]:
    """Twenty runs in the authors' format from small set 2, and what each holds."""
    require_omniglot()
    folder = tmp_path_factory.mktemp("omniglot-runs") / "all_runs"
    return folder, write_runs(folder, DATA / RUNS_ARCHIVE, RUN_ALPHABETS, seed=0)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("omniglot-cache")


def config(runs_dir: Path, cache_dir: Path, **options: object) -> OmniglotRunsConfig:
    options = {"archives": (TRAIN_ARCHIVE,), **options}
    return OmniglotRunsConfig(runs_dir=str(runs_dir), data_root=str(DATA), cache_dir=str(cache_dir),
                              **options)


@pytest.fixture(scope="module")
def suite(runs: tuple[Path, list[RunTruth]], cache_dir: Path) -> OmniglotRunsSuite:
    return OmniglotRunsSuite(config(runs[0], cache_dir))


def decode_member(member: str) -> torch.Tensor:
    """A drawing of the archive decoded independently of the suite: 28 x 28 LANCZOS, ink = 1."""
    with zipfile.ZipFile(DATA / RUNS_ARCHIVE) as archive:
        data = archive.read(member)
    with Image.open(io.BytesIO(data)) as image:
        small = image.convert("L").resize((28, 28), Image.Resampling.LANCZOS)
    return 1 - torch.frombuffer(bytearray(small.tobytes()), dtype=torch.uint8).view(28, 28).float() / 255


def character(member: str) -> tuple[str, str]:
    return tuple(member.split("/")[1:3])  # type: ignore[return-value]


# --- the fixture: the authors' format from real drawings ------------------------------------------------


def test_fixture_writes_the_authors_format(runs: tuple[Path, list[RunTruth]], tmp_path: Path) -> None:
    folder, truths = runs
    assert sorted(p.name for p in folder.iterdir()) == [f"run{i:02d}" for i in range(1, 21)]
    with zipfile.ZipFile(DATA / TRAIN_ARCHIVE) as archive:
        seen_in_training = {name.split("/")[1] for name in archive.namelist() if name.count("/") == 3}
    for number, truth in enumerate(truths, start=1):
        run = folder / f"run{number:02d}"
        assert sorted(p.name for p in run.iterdir()) == ["class_labels.txt", "test", "training"]
        assert sorted(p.name for p in (run / "training").iterdir()) == png_names("class")
        assert sorted(p.name for p in (run / "test").iterdir()) == png_names("item")
        with Image.open(run / "test" / "item01.png") as image:
            assert image.size == (105, 105) and image.format == "PNG"
        with zipfile.ZipFile(DATA / RUNS_ARCHIVE) as archive:  # the archive's own bytes
            assert (run / "training" / "class01.png").read_bytes() == archive.read(truth.classes[0])
        lines = (run / "class_labels.txt").read_text().splitlines()
        run_name, first_class = f"run{number:02d}", truth.labels[0] + 1
        assert lines[0] == f"{run_name}/test/item01.png {run_name}/training/class{first_class:02d}.png"
        # One alphabet per run, unseen by meta-training; two different drawers; every class tested once.
        assert {character(m)[0] for m in truth.classes + truth.items} == {truth.alphabet}
        assert truth.alphabet in RUN_ALPHABETS and truth.alphabet not in seen_in_training
        assert truth.drawers[0] != truth.drawers[1]
        assert all(m.endswith(f"_{truth.drawers[0]}.png") for m in truth.classes)
        assert all(m.endswith(f"_{truth.drawers[1]}.png") for m in truth.items)
        assert sorted(truth.labels) == list(range(20)) and truth.labels != tuple(range(20))
        assert [character(truth.classes[k]) for k in truth.labels] == [character(m) for m in truth.items]
    again = write_runs(tmp_path / "again", DATA / RUNS_ARCHIVE, RUN_ALPHABETS, runs=2, seed=0)
    assert again == truths[:2]  # deterministic by seed
    assert write_runs(tmp_path / "other", DATA / RUNS_ARCHIVE, RUN_ALPHABETS, runs=2, seed=1) != again
    with pytest.raises(ValueError, match="alphabet 'Tagalog' has 17 characters"):
        write_runs(tmp_path / "tagalog", DATA / RUNS_ARCHIVE, ["Tagalog"])


# --- parsing ----------------------------------------------------------------------------------------------


def test_the_command_line_builds_runs_and_overwrites_nothing(
    runs: tuple[Path, list[RunTruth]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "all_runs"
    assert omniglot_runs_build.main([str(DATA / RUNS_ARCHIVE), *RUN_ALPHABETS, "--out", str(folder)]) == 0
    assert "wrote 20 runs of 20 characters from Japanese_(katakana), Sanskrit" in capsys.readouterr().out
    built = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    assert built == sorted(p.relative_to(runs[0]) for p in runs[0].rglob("*") if p.is_file())
    assert all((folder / p).read_bytes() == (runs[0] / p).read_bytes() for p in built)  # same seed, same runs
    for argv, message in (([str(DATA / RUNS_ARCHIVE), "Sanskrit", "--out", str(folder)], "is not an empty folder"),
                          ([str(DATA / RUNS_ARCHIVE), "Tagalog", "--out", str(tmp_path / "t")], "has 17 characters"),
                          ([str(tmp_path / "none.zip"), "Sanskrit", "--out", str(tmp_path / "n")], "is not a file")):
        with pytest.raises(SystemExit) as exit_info:
            omniglot_runs_build.main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert len(list(folder.rglob("*.png"))) == 20 * 40  # the refused run left the folder as it was


def test_reads_a_good_folder(runs: tuple[Path, list[RunTruth]], cache_dir: Path) -> None:
    folder, truths = runs
    parsed = read_runs(folder)
    assert [run.folder.name for run in parsed] == [f"run{i:02d}" for i in range(1, 21)]
    assert [run.labels for run in parsed] == [truth.labels for truth in truths]
    assert parsed[4].classes[6] == folder / "run05" / "training" / "class07.png"
    assert parsed[4].items[0] == folder / "run05" / "test" / "item01.png"
    assert parse_class_labels(folder / "run03" / "class_labels.txt", "run03") == truths[2].labels
    assert check_runs(config(folder, cache_dir)) == ""
    two = Path(shutil.copytree(folder, folder.parent / "two-runs"))
    for extra in range(3, 21):
        shutil.rmtree(two / f"run{extra:02d}")
    assert len(read_runs(two)) == 2  # however many runs there are, numbered from run01


def _edit_line(path: Path, number: int, text: str | None) -> None:
    lines = path.read_text().splitlines()
    if text is None:
        del lines[number - 1]
    else:
        lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


def _break(folder: Path, how: str) -> None:
    labels = folder / "run05" / "class_labels.txt"
    first = labels.read_text().splitlines()[0].split()
    if how == "no labels file":
        (folder / "run04" / "class_labels.txt").unlink()
    elif how == "no class image":
        (folder / "run02" / "training" / "class07.png").unlink()
    elif how == "extra class image":
        training = folder / "run02" / "training"
        shutil.copy(training / "class01.png", training / "class21.png")
    elif how == "one field":
        _edit_line(labels, 3, "run05/test/item03.png")
    elif how == "item number out of range":
        _edit_line(labels, 4, "run05/test/item21.png run05/training/class01.png")
    elif how == "pair across runs":
        _edit_line(labels, 2, "run05/test/item02.png run06/training/class02.png")
    elif how == "duplicate class":
        _edit_line(labels, 5, f"run05/test/item05.png {first[1]}")
    elif how == "duplicate item":
        _edit_line(labels, 6, f"{first[0]} run05/training/class01.png")
    elif how == "missing line":
        _edit_line(labels, 20, None)
    elif how == "blank line":
        labels.write_text(labels.read_text() + "\n")
    elif how == "gap in runs":
        (folder / "run20").rename(folder / "run21")
    elif how == "no runs":
        for run in folder.iterdir():
            shutil.rmtree(run)


LABELS = r"run05/class_labels\.txt"
BROKEN = [
    ("no labels file", r"run04/class_labels\.txt is missing; every run folder needs its class_labels\.txt"),
    ("no class image", r"run02/training/class07\.png is missing \(1 of training/class01\.png \.\.\. class20"),
    ("extra class image", r"run02/training holds class21\.png; a run is 20-way"),
    ("one field", LABELS + r":3: expected 'run05/test/itemNN\.png run05/training/classNN\.png'"),
    ("item number out of range", LABELS + r":4: expected .* got 'run05/test/item21\.png"),
    ("pair across runs", LABELS + r":2: pairs run05/test/item02\.png with run06/training/class02\.png; "
                                  r"both must be in run05"),
    ("duplicate class", LABELS + r":5: class\d\d\.png is paired again \(first on line 1\); every class is "
                                 r"used exactly once"),
    ("duplicate item", LABELS + r":6: test image item01\.png is paired again \(first on line 1\)"),
    ("missing line", LABELS + r": 19 lines; a 20-way run needs 20, one per test image \(no line for "
                              r"item20\.png\)"),
    ("blank line", LABELS + r":21: expected .* got ''"),
    ("gap in runs", r"must be numbered run01, run02, \.\.\. without gaps; found run01, .*, run19, run21"),
    ("no runs", r"holds no run folders; expected run01 \.\.\. run20"),
]


@pytest.mark.parametrize(("how", "message"), BROKEN, ids=[b[0] for b in BROKEN])
def test_malformed_runs_are_refused_naming_file_and_line(
    runs: tuple[Path, list[RunTruth]], cache_dir: Path, tmp_path: Path, how: str, message: str
) -> None:
    folder = Path(shutil.copytree(runs[0], tmp_path / "all_runs"))
    _break(folder, how)
    with pytest.raises(UsageError, match=message):
        read_runs(folder)
    assert re.search(message, check_runs(config(folder, cache_dir)))  # what the grid reports before running
    with pytest.raises(UsageError, match=message):
        OmniglotRunsSuite(config(folder, cache_dir))


def test_a_grid_naming_broken_runs_fails_before_any_cell(
    runs: tuple[Path, list[RunTruth]], registry, write_grid, tmp_path: Path
) -> None:
    folder = Path(shutil.copytree(runs[0], tmp_path / "all_runs"))
    _break(folder, "pair across runs")
    grid = write_grid(f'[[block]]\nalgorithms = ["protonet"]\nsuites = [{{ name = "omniglot-runs", '
                      f'runs_dir = "{folder.as_posix()}", archives = ["{TRAIN_ARCHIVE}"] }}]\n')
    with pytest.raises(UsageError, match=r"suite 'omniglot-runs' cannot run here: .*run05/class_labels\.txt:"
                       r"2: pairs run05/test/item02\.png with run06/training/class02\.png"):
        load_grid(str(grid), registry)


def test_missing_runs_dir_names_the_option_and_the_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_omniglot()
    reason = check_runs(OmniglotRunsConfig(data_root=str(DATA)))
    assert reason.startswith("no Omniglot one-shot runs: set the suite option runs_dir to the folder holding "
                             "run01 ... run20")
    assert "class_labels.txt" in reason and str(DATA / "all_runs") in reason
    nowhere = OmniglotRunsConfig(runs_dir=str(tmp_path / "nowhere"), data_root=str(DATA))
    assert check_runs(nowhere).startswith(f"runs_dir {tmp_path / 'nowhere'} is not a folder")
    monkeypatch.delenv("HARNESS_DATA", raising=False)
    assert "$HARNESS_DATA/omniglot/all_runs, needs $HARNESS_DATA" in check_runs(OmniglotRunsConfig())
    # `all_runs` beside the archives is the default.
    (tmp_path / "data" / "all_runs" / "run01").mkdir(parents=True)
    beside = OmniglotRunsConfig(data_root=str(tmp_path / "data"))
    assert "data/all_runs/run01/training/class01.png is missing" in check_runs(beside)


def test_harness_run_without_runs_dir_is_a_usage_error(tmp_path: Path) -> None:
    out = run_cli("run", "--suite", "omniglot-runs", "--backend", "cpu", cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert ("suite 'omniglot-runs' cannot run here: no Omniglot one-shot runs: set the suite option "
            "runs_dir") in out.stderr
    layout = "training/class01.png ... class20.png, test/item01.png ... item20.png and class_labels.txt"
    assert layout in out.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"query": 0}, "query must be a positive integer, got 0"),
        ({"image_size": 12}, "model 'conv4' needs image_size >= 16"),
        ({"model": "resnet12"}, "model must be one of conv4, conv4-nopool, got 'resnet12'"),
        ({"runs_dir": ""}, "runs_dir must be a folder path, got ''"),
        ({"archives": ()}, "archives must be a non-empty list of zip file names"),
        ({"archives": ("../images_background.zip",)}, "zip file names in the data folder"),
    ],
)
def test_config_rejects_impossible_settings(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OmniglotRunsConfig(**options)


def test_undecodable_image_is_named(
    runs: tuple[Path, list[RunTruth]], cache_dir: Path, tmp_path: Path
) -> None:
    folder = Path(shutil.copytree(runs[0], tmp_path / "all_runs"))
    (folder / "run07" / "test" / "item11.png").write_bytes(b"not a png")
    with pytest.raises(UsageError, match=r"cannot decode .*run07/test/item11\.png: UnidentifiedImageError"):
        OmniglotRunsSuite(config(folder, cache_dir))


def test_runs_drawn_from_the_meta_training_archives_are_refused(
    runs: tuple[Path, list[RunTruth]], cache_dir: Path
) -> None:
    with pytest.raises(UsageError, match=r"800 of the 800 images of the runs in .* \(in run01, run02, run03, "
                       r"run04, run05 \.\.\.\) are drawings in the meta-training archives "
                       r"images_background_small1\.zip, images_background_small2\.zip"):
        OmniglotRunsSuite(config(runs[0], cache_dir, archives=(TRAIN_ARCHIVE, RUNS_ARCHIVE)))


# --- episodes ------------------------------------------------------------------------------------------


def test_test_episodes_are_the_runs_as_class_labels_pairs_them(
    suite: OmniglotRunsSuite, runs: tuple[Path, list[RunTruth]]
) -> None:
    batch = suite.fixed_episodes("test")
    assert batch is not None and suite.fixed_episodes("train") is None and suite.fixed_episodes("val") is None
    assert batch.support_x.shape == batch.query_x.shape == (20, 20, 1, 28, 28)
    assert batch.support_x.dtype == batch.query_x.dtype == torch.float32
    assert batch.support_y.dtype == batch.query_y.dtype == torch.int64
    assert float(batch.query_x.min()) >= 0.0 and float(batch.query_x.max()) == 1.0
    assert float(batch.query_x.mean()) < 0.2  # inverted: the ink is bright, the background dark
    for r, truth in enumerate(runs[1]):
        assert batch.support_y[r].tolist() == list(range(20))  # classKK.png is label KK - 1
        assert batch.query_y[r].tolist() == list(truth.labels)  # item order, labels from class_labels.txt
        for k in (0, 13):
            assert torch.allclose(batch.support_x[r, k, 0], decode_member(truth.classes[k]), atol=1e-6)
        for j in (0, 19):
            assert torch.allclose(batch.query_x[r, j, 0], decode_member(truth.items[j]), atol=1e-6)
        # The label of every query names the training image of the same character.
        named = [character(truth.classes[int(k)]) for k in batch.query_y[r]]
        assert named == [character(m) for m in truth.items]


def test_sampled_test_episodes_are_runs_in_random_order(suite: OmniglotRunsSuite) -> None:
    fixed = suite.fixed_episodes("test")
    drawn = suite.sample(25, torch.Generator().manual_seed(4), "test")
    order = [next(r for r in range(20) if torch.equal(fixed.support_x[r], drawn.support_x[i]))
             for i in range(25)]
    assert sorted(order[:20]) == list(range(20)) and order[:20] != list(range(20))  # each run once per pass
    assert all(torch.equal(drawn.query_y[i], fixed.query_y[order[i]]) for i in range(25))


@pytest.mark.parametrize("split", ["train", "val"])
def test_background_episodes_are_20_way_1_shot_from_their_alphabets(
    suite: OmniglotRunsSuite, split: str
) -> None:
    images = suite.data.images
    lookup = {images[c, d].numpy().tobytes(): c
              for c in range(images.shape[0]) for d in range(images.shape[1])}
    batch = suite.sample(6, torch.Generator().manual_seed(2), split)
    assert batch.support_x.shape == (6, 20, 1, 28, 28) and batch.query_x.shape == (6, 300, 1, 28, 28)
    assert batch.support_y.tolist() == [list(range(20))] * 6
    assert batch.query_y.tolist() == [[k for k in range(20) for _ in range(15)]] * 6
    alphabets = set(suite.alphabets[split])
    for i in range(6):
        pixels = (torch.cat([batch.support_x[i], batch.query_x[i]]) * 255).round().to(torch.uint8)
        chars = [lookup[p[0].numpy().tobytes()] for p in pixels]
        labels = batch.support_y[i].tolist() + batch.query_y[i].tolist()
        per_label: dict[int, set[int]] = {}
        for c, label in zip(chars, labels, strict=True):
            per_label.setdefault(label, set()).add(c)
        assert all(len(c) == 1 for c in per_label.values()) and len(set(chars)) == 20  # 20 characters
        assert {suite.data.characters[c][0] for c in chars} <= alphabets
    again = suite.sample(6, torch.Generator().manual_seed(2), split)
    assert torch.equal(again.query_x, batch.query_x)


def test_background_splits() -> None:
    small1 = ["Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"]
    assert background_splits(small1) == {"train": ("Balinese", "Early_Aramaic", "Greek", "Korean"),
                                         "val": ("Latin",)}
    both = [*small1, "Japanese_(katakana)", "Sanskrit", "Tagalog"]
    assert background_splits(list(reversed(both)))["val"] == ("Korean",)  # order does not matter
    assert background_splits(both, ["Korean", "Tagalog"])["val"] == ("Korean", "Tagalog")
    assert len(background_splits([f"A{i:02d}" for i in range(30)])["val"]) == 6
    with pytest.raises(UsageError, match="val_alphabets names Klingon, not in the archives; they hold Bali"):
        background_splits(small1, ["Klingon"])
    with pytest.raises(UsageError, match="val_alphabets holds every alphabet"):
        background_splits(small1, small1)


def test_too_few_validation_characters_or_drawings(
    runs: tuple[Path, list[RunTruth]], cache_dir: Path
) -> None:
    with pytest.raises(UsageError, match=r"20-way episodes need 20 classes, but the val split \(alphabets: "
                       r"Tagalog\) has 17; choose held-out alphabets with the option val_alphabets"):
        OmniglotRunsSuite(config(runs[0], cache_dir, archives=(RUNS_ARCHIVE,), val_alphabets=("Tagalog",)))
    with pytest.raises(UsageError, match=r"1 shot \+ query = 1 \+ 20 images per class, but each Omniglot "
                       r"character has 20 drawings"):
        OmniglotRunsSuite(config(runs[0], cache_dir, query=20))
    chosen = OmniglotRunsSuite(config(runs[0], cache_dir, val_alphabets=("Early_Aramaic",), query=3))
    assert chosen.alphabets == {"train": ("Balinese", "Greek", "Korean", "Latin"), "val": ("Early_Aramaic",)}
    assert chosen.sample(1, torch.Generator().manual_seed(0), "val").query_x.shape == (1, 60, 1, 28, 28)


# --- model, metric, registration ---------------------------------------------------------------------------


def test_model_metric_and_registration(suite: OmniglotRunsSuite, registry) -> None:
    torch.manual_seed(0)
    model = suite.build_model()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(64, (3, 3))] * 4
    assert list(model.buffers()) == []  # batch statistics only, as the omniglot suite's conv4
    assert (model[-1].in_features, model[-1].out_features) == (64, 20)
    assert model(suite.fixed_episodes("test").query_x[0]).shape == (20, 20)
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    target = torch.tensor([0, 1, 2, 1])
    assert suite.metric(logits, target).shape == ()
    assert float(suite.metric(logits, target)) == pytest.approx(0.5)  # two of four wrong
    assert float(suite.metric(logits, torch.tensor([0, 1, 0, 2]))) == 0.0
    assert float(suite.loss(logits, target)) == pytest.approx(float(nn.CrossEntropyLoss()(logits, target)))
    assert (suite.metric_name, suite.higher_is_better) == ("error_rate", False)
    spec = registry.suite("omniglot-runs").spec
    assert (spec.config, spec.task_kind, spec.check) == (OmniglotRunsConfig, "classification", check_runs)
    assert spec.episode_neutral == ("model", "data_root", "cache_dir")
    described = suite.describe()["splits"]
    assert described["test"]["runs"] == 20 and len(described["test"]["runs_sha256"]) == 64
    assert described["val"] == {"alphabets": ["Latin"], "characters": 26, "classes": 26}


# --- end to end --------------------------------------------------------------------------------------------


def test_harness_run_meta_trains_and_scores_the_runs(
    runs: tuple[Path, list[RunTruth]], write_grid, tmp_path: Path
) -> None:
    """40 ProtoNet episodes (20-way 1-shot, 2 queries per class, meta_lr 0.003) on small set 1 take the
    runs' error rate from 0.80 (untrained conv4 prototypes; chance is 0.95) to about 0.6, in about 15 s."""
    suite = f'name = "omniglot-runs", runs_dir = "{runs[0].as_posix()}", archives = ["{TRAIN_ARCHIVE}"]'
    grid = write_grid(f"""
[[block]]
algorithms = [{{ name = "protonet", meta_lr = 0.003 }}]
suites = [{{ {suite}, query = 2 }}]

[budget]
iterations = 40
val_interval = 20
val_episodes = 4
test_episodes = 6
timeout = 300
threads = 1
""")
    out = run_cli("run", "--grid", str(grid), "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    (path,) = (tmp_path / "results").rglob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok", record.get("traceback", record["reason"])
    metric = record["metric"]
    assert (metric["name"], metric["higher_is_better"], metric["episodes"]) == ("error_rate", False, "fixed")
    assert metric["n"] == 20  # every run once, whatever the budget's test_episodes
    assert metric["mean"] < 0.7, f"error rate {metric['mean']:.3f} after meta-training; chance is 0.95"
    test_split = record["suite_info"]["splits"]["test"]
    assert test_split["runs"] == 20 and test_split["runs_dir"] == str(runs[0])
    assert "error rate ↓" in out.stdout  # the leaderboard names the measure in words
