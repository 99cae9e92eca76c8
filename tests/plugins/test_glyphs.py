"""The procedural glyphs suite: determinism of classes and episodes, disjoint splits, layout, errors,
the conv4 model, registration, and first-order MAML learning 5-way 1-shot."""

from __future__ import annotations

import json

import pluggy
import pytest
import torch
from torch import nn

import harness.hookspecs
from harness.specs import TaskSuiteSpec
from metaharness_plugins.algorithms.maml import MAML, FOMAMLHparams
from metaharness_plugins.backends.cpu import CPUBackend
from metaharness_plugins.suites import glyphs
from metaharness_plugins.suites.glyphs import GlyphsConfig, GlyphsSuite, class_ranges, stroke_program


@pytest.fixture(scope="module")
def suite() -> GlyphsSuite:
    return GlyphsSuite(GlyphsConfig())


def test_same_seed_same_episodes_different_seed_different(suite: GlyphsSuite) -> None:
    a = suite.sample(3, torch.Generator().manual_seed(7), "train")
    b = GlyphsSuite(GlyphsConfig()).sample(3, torch.Generator().manual_seed(7), "train")
    c = suite.sample(3, torch.Generator().manual_seed(8), "train")
    for name in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.support_x, c.support_x)


def test_a_class_is_a_pure_function_of_seed_and_index() -> None:
    points, strokes = stroke_program(0, 123)
    again, strokes_again = stroke_program(0, 123)
    assert torch.equal(points, again) and strokes == strokes_again and 2 <= strokes <= 5
    assert not torch.equal(points, stroke_program(1, 123)[0])  # another universe
    assert not torch.equal(points, stroke_program(0, 124)[0])
    assert bool((points[:strokes] > 0).all() and (points[:strokes] < 1).all())
    # The class does not depend on num_classes or on which classes were drawn before.
    small = GlyphsSuite(GlyphsConfig(num_classes=200))
    big = GlyphsSuite(GlyphsConfig())
    big.programs(torch.arange(150))
    assert torch.equal(small.programs(torch.tensor([123]))[0], big.programs(torch.tensor([123]))[0])
    counts = [stroke_program(0, c)[1] for c in range(200)]
    assert set(counts) == {2, 3, 4, 5}


def test_drawings_of_a_class_differ_but_are_closer_than_other_classes(suite: GlyphsSuite) -> None:
    classes = torch.arange(1000, 1020)
    x = suite.draw(classes.unsqueeze(1).expand(-1, 6), torch.Generator().manual_seed(0)).flatten(2)
    assert x.shape == (20, 6, 28 * 28)
    dist = torch.cdist(x.flatten(0, 1), x.flatten(0, 1)).view(20, 6, 20, 6)
    same = torch.eye(20, dtype=torch.bool)
    off = ~torch.eye(6, dtype=torch.bool)
    within = torch.stack([dist[c, :, c][off].mean() for c in range(20)])
    between = torch.stack([dist[c, :, ~same[c]].mean() for c in range(20)])
    assert bool((within > 1.0).all())  # drawings are not copies
    assert float(within.mean()) < 0.9 * float(between.mean())  # measured: 8.5 against 10.8
    assert int((within < between).sum()) == 20


def test_render_matches_the_exact_distance_on_a_straight_stroke() -> None:
    """The Gaussian line integral gives each pixel's distance to a straight stroke: ink within 0.05 of
    clamp(width + 0.5 - distance, 0, 1) away from the stroke's ends."""
    points = torch.zeros(1, 5, 4, 2)
    points[0, 0, :, 0] = torch.tensor([4.0, 10.0, 16.0, 22.0])  # y = 13.3 from x = 4 to x = 22
    points[0, 0, :, 1] = 13.3
    image = glyphs.render(points, torch.tensor([1]), torch.tensor([1.0]), 28)[0]
    rows = torch.arange(28) + 0.5
    expected = (1.5 - (rows - 13.3).abs()).clamp(0, 1)
    assert torch.allclose(image[:, 8:19], expected.unsqueeze(1).expand(28, 11), atol=0.05)
    assert float(image[:, :2].abs().max()) == 0.0 and float(image[:, 26:].max()) == 0.0


def test_splits_are_disjoint_and_cover_the_classes(suite: GlyphsSuite) -> None:
    assert class_ranges(4000) == {"train": (0, 3000), "val": (3000, 3500), "test": (3500, 4000)}
    ranges = class_ranges(4000)
    for split in ("train", "val", "test"):
        batch = suite.sample(20, torch.Generator().manual_seed(1), split)
        assert batch.num_tasks == 20
    # Trace classes through the sampler's own permutation: the programs it drew lie in the split only.
    for split, (lo, hi) in ranges.items():
        fresh = GlyphsSuite(GlyphsConfig())
        fresh.sample(30, torch.Generator().manual_seed(2), split)
        known = fresh._known.nonzero().flatten()
        assert len(known) > 30 and int(known.min()) >= lo and int(known.max()) < hi
    assert suite.describe()["splits"]["test"] == {"classes": [3500, 4000]}
    json.dumps(suite.describe())


def test_episode_layout_dtype_and_range(suite: GlyphsSuite) -> None:
    cfg = GlyphsConfig(ways=4, shots=2, query=3, image_size=20)
    batch = GlyphsSuite(cfg).sample(5, torch.Generator().manual_seed(0), "val")
    assert batch.support_x.shape == (5, 8, 1, 20, 20) and batch.query_x.shape == (5, 12, 1, 20, 20)
    assert batch.support_x.dtype == torch.float32 and batch.support_y.dtype == torch.int64
    assert batch.support_y[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert batch.query_y[0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    x = torch.cat([batch.support_x, batch.query_x], dim=1)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    ink = x.mean(dim=(2, 3, 4))
    assert bool((ink > 0.03).all() and (ink < 0.4).all())  # bright strokes on a mostly dark background
    assert bool((x[..., 0, :] == 0).float().mean() > 0.9)  # little ink touches the border
    # Every image of an episode is a distinct drawing.
    flat = x[0].flatten(1)
    assert len({tuple(row.tolist()) for row in flat}) == flat.shape[0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ways": 0}, "ways must be a positive integer"),
        ({"shots": 0}, "shots must be a positive integer"),
        ({"query": -1}, "query must be a positive integer"),
        ({"model": "resnet"}, "model must be one of conv4, conv4-nopool"),
        ({"image_size": 12}, "model 'conv4' needs image_size >= 16"),
        ({"image_size": 6, "model": "conv4-nopool"}, "image_size must be from 8 to 512"),
        ({"ways": 30, "num_classes": 200}, "30-way episodes need 30 classes in every split"),
        ({"seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_config_rejects_impossible_settings(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GlyphsConfig(**options)


def test_unknown_split_and_bad_task_count(suite: GlyphsSuite) -> None:
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        suite.sample(1, torch.Generator(), "dev")
    with pytest.raises(ValueError, match="n_tasks must be a positive integer"):
        suite.sample(0, torch.Generator(), "train")


def test_conv4_model_loss_and_metric(suite: GlyphsSuite) -> None:
    torch.manual_seed(0)
    model = suite.build_model()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(64, (3, 3))] * 4
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 4 and list(model.buffers()) == []
    batch = suite.sample(1, torch.Generator().manual_seed(0), "train")
    assert model(batch.query_x[0]).shape == (75, 5)
    nopool = GlyphsSuite(GlyphsConfig(model="conv4-nopool", image_size=12)).build_model()
    assert nopool(torch.zeros(3, 1, 12, 12)).shape == (3, 5)
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    target = torch.tensor([0, 1, 1])
    assert float(suite.metric(logits, target)) == pytest.approx(2 / 3)
    assert float(suite.loss(logits, target)) == pytest.approx(float(nn.CrossEntropyLoss()(logits, target)))
    assert (suite.metric_name, suite.higher_is_better) == ("accuracy", True)


def test_registers_through_pluggy() -> None:
    manager = pluggy.PluginManager("harness")
    manager.add_hookspecs(harness.hookspecs)
    manager.register(glyphs)
    specs = [spec for result in manager.hook.harness_register_task_suites() for spec in result]
    assert [(s.name, s.task_kind, s.config) for s in specs] == [("glyphs", "classification", GlyphsConfig)]
    assert isinstance(specs[0], TaskSuiteSpec) and "Omniglot" in specs[0].paper and specs[0].description
    assert isinstance(specs[0].factory(GlyphsConfig()), GlyphsSuite)


def test_first_order_maml_learns_5_way_1_shot() -> None:
    """40 meta-iterations of first-order MAML (inner_lr 0.4, meta-batch 4, meta_lr 0.003, as the Omniglot
    suite's test) lift test accuracy after one adaptation step from chance (0.2) to 0.53 (0.46-0.54 over
    four model/episode seeds), in about 10 s on one thread. Five query images per class keep it cheap."""
    suite = GlyphsSuite(GlyphsConfig(query=5))
    torch.manual_seed(0)
    hparams = FOMAMLHparams(inner_lr=0.4, meta_lr=0.003, meta_batch_size=4, test_steps=1, vmap_tasks=False)
    algo = MAML(hparams, suite.build_model(), suite, CPUBackend())
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        algo.meta_train_step(suite.sample(4, generator, "train"))
    test = suite.sample(50, torch.Generator().manual_seed(99), "test")
    accuracy = torch.zeros(2)
    with torch.no_grad():
        for i in range(test.num_tasks):
            states = algo.adapt(test.support_x[i], test.support_y[i], 1)
            query_x, query_y = test.query_x[i], test.query_y[i]
            accuracy += torch.stack([suite.metric(algo.predict(s, query_x), query_y) for s in states])
    accuracy /= test.num_tasks
    assert float(accuracy[1]) > 0.35, f"accuracy after one step {float(accuracy[1]):.3f}, chance is 0.2"
    assert float(accuracy[1]) > float(accuracy[0]) + 0.1

