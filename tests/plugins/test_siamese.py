"""Siamese networks: the weighted L1 verification score against a hand computation, its symmetry, the
balanced pairs, one-shot classification by best match, the options, and learning glyphs 5-way 1-shot."""

from __future__ import annotations

import math

import pluggy
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

import harness.hookspecs
from harness.specs import resolve_params
from metaharness_plugins.algorithms import siamese as siamese_module
from metaharness_plugins.algorithms._siamese import WeightedL1, affine_distort, balanced_pairs
from metaharness_plugins.algorithms.siamese import Siamese, SiameseHparams, check_suite
from metaharness_plugins.backends.cpu import CPUBackend
from metaharness_plugins.suites.glyphs import GlyphsConfig, GlyphsSuite
from tests.plugins.helpers import TinySuite


def _tiny(**hparams: object) -> Siamese:
    torch.manual_seed(3)
    suite = TinySuite(None)
    return Siamese(SiameseHparams(**hparams), suite.build_model(), suite, CPUBackend())


def _glyphs(ways: int = 5, shots: int = 1, query: int = 5, **hparams: object) -> tuple[Siamese, GlyphsSuite]:
    suite = GlyphsSuite(GlyphsConfig(ways=ways, shots=shots, query=query, image_size=28))
    torch.manual_seed(0)
    return Siamese(SiameseHparams(**hparams), suite.build_model(), suite, CPUBackend()), suite


def test_weighted_l1_head_matches_a_hand_computation() -> None:
    head = WeightedL1(4).double()
    assert torch.allclose(head.weights(), torch.full((4,), 0.25, dtype=torch.float64))  # 1 / dim at start
    with torch.no_grad():
        head.raw.copy_(torch.tensor([-1.0, 0.0, 0.5, 2.0]))
        head.bias.fill_(0.3)
    h1 = torch.tensor([[0.1, -2.0, 3.0, 0.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    h2 = torch.tensor([[0.4, 1.0, 3.0, -1.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    weights = [math.log1p(math.exp(r)) for r in (-1.0, 0.0, 0.5, 2.0)]  # softplus, by hand
    expected = [0.3 - sum(w * abs(a - b) for w, a, b in zip(weights, r1, r2))
                for r1, r2 in zip(h1.tolist(), h2.tolist())]
    assert torch.allclose(head(h1, h2), torch.tensor(expected, dtype=torch.float64))
    # Identical embeddings score the bias, the maximum.
    assert float(head(h1, h2)[1].detach()) == pytest.approx(0.3)


def test_verification_score_is_symmetric_and_highest_for_the_same_image() -> None:
    algo, suite = _glyphs()
    batch = suite.sample(1, torch.Generator().manual_seed(0), "train")
    a, b = batch.query_x[0][:5], batch.query_x[0][5:10]
    with torch.no_grad():
        ab, ba = algo.verification_logits(a, b), algo.verification_logits(b, a)
        same = algo.verification_logits(a, a)
        # Every pair of a with b, both sides embedded as a batch (conv4's batch norm uses batch statistics).
        cross = algo.distance(algo.twin(a).unsqueeze(1), algo.twin(b).unsqueeze(0))
    assert torch.equal(ab, ba)
    assert torch.equal(same, algo.distance.bias.expand(5))
    assert bool((cross < same.max()).all())


def test_pairs_are_balanced_distinct_and_correctly_labelled() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    first, second, target = balanced_pairs(labels, 12, torch.Generator().manual_seed(0))
    assert first.shape == second.shape == target.shape == (24,)
    assert torch.equal(target, torch.cat([torch.ones(12), torch.zeros(12)]))
    assert bool((first < second).all())  # pairs of distinct images, each unordered pair once
    assert torch.equal((labels[first] == labels[second]).float(), target)
    # 3 + 3 + 6 = 12 same-class pairs exist: all of them, once each.
    assert len({(int(i), int(j)) for i, j in zip(first[:12], second[:12])}) == 12
    assert len({(int(i), int(j)) for i, j in zip(first[12:], second[12:])}) == 12


def test_pairs_are_drawn_uniformly_and_with_replacement_when_few() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2])  # same-class pairs: (0, 1) and (2, 3); 8 different-class pairs
    generator = torch.Generator().manual_seed(1)
    counts = torch.zeros(5, 5)
    for _ in range(400):
        first, second, target = balanced_pairs(labels, 4, generator)
        assert int(target.sum()) == 4
        counts.index_put_((first, second), torch.ones(8), accumulate=True)
    same_counts = [float(counts[0, 1]), float(counts[2, 3])]
    different = [float(counts[i, j]) for i in range(5) for j in range(i + 1, 5) if labels[i] != labels[j]]
    assert sum(same_counts) == sum(different) == 1600
    # Uniform over the candidates of each kind (chi-square goodness of fit, not rejected at 1%).
    assert stats.chisquare(same_counts).pvalue > 0.01
    assert stats.chisquare(different).pvalue > 0.01


def test_episodes_without_both_kinds_of_pair_are_refused() -> None:
    with pytest.raises(ValueError, match="no same-class pair.*two images of some class"):
        balanced_pairs(torch.arange(4), 2)
    with pytest.raises(ValueError, match="no different-class pair"):
        balanced_pairs(torch.zeros(4, dtype=torch.int64), 2)


def test_a_query_that_is_a_support_image_gets_its_label() -> None:
    algo = _tiny()
    batch = TinySuite(None).sample(1, torch.Generator().manual_seed(0), "train")
    sx, sy = batch.support_x[0], batch.support_y[0]  # two shots of each of 3 classes
    order = torch.tensor([4, 0, 5, 2, 1, 3])
    with torch.no_grad():
        state = algo.adapt(sx, sy, 0)[0]
        logits = algo.predict(state, sx[order])
    assert logits.shape == (6, 3)
    assert torch.equal(logits.argmax(-1), sy[order])
    # The matched class scores log sigmoid(b): identical embeddings are at distance 0.
    best = F.logsigmoid(algo.distance.bias).expand(6)
    assert torch.allclose(logits.max(-1).values, best)


def test_conv4_picks_the_identical_support_image() -> None:
    """With batch norm on batch statistics a query set that is the support set reordered embeds alike."""
    algo, suite = _glyphs(ways=5, shots=2)
    batch = suite.sample(3, torch.Generator().manual_seed(4), "test")
    for i in range(3):
        sx, sy = batch.support_x[i], batch.support_y[i]
        order = torch.randperm(len(sy), generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            predicted = algo.predict(algo.adapt(sx, sy, 0)[0], sx[order]).argmax(-1)
        assert torch.equal(predicted, sy[order])


def test_mean_shot_rule_is_the_log_mean_match_probability() -> None:
    algo = _tiny(shot_rule="mean")
    batch = TinySuite(None).sample(1, torch.Generator().manual_seed(2), "train")
    sx, sy, qx = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    with torch.no_grad():
        logits = algo.predict(algo.adapt(sx, sy, 0)[0], qx)
        hs, hq = algo.twin(sx), algo.twin(qx)
        w, b = algo.distance.weights(), float(algo.distance.bias)
    for q in range(len(qx)):
        for k in range(3):
            p = [1 / (1 + math.exp(-(b - float((w * (hq[q] - hs[s]).abs()).sum()))))
                 for s in range(len(sy)) if sy[s] == k]
            assert float(logits[q, k]) == pytest.approx(math.log(sum(p) / len(p)), rel=1e-9)
    # A class with no support image can never be chosen.
    with torch.no_grad():
        missing = algo.predict({"support": hs[:2], "labels": sy[:2]}, qx)
    assert bool(torch.isinf(missing[:, 2]).all()) and not bool(missing[:, :2].isnan().any())


def test_meta_gradient_reaches_twin_and_head_and_adapt_is_detached() -> None:
    algo = _tiny(pairs=8)
    batch = TinySuite(None).sample(2, torch.Generator().manual_seed(5), "train")
    loss, grads = algo.meta_gradient(batch)
    assert math.isfinite(loss)
    assert set(grads) == {"twin.0.weight", "twin.0.bias", "distance.raw", "distance.bias"}
    assert all(float(g.abs().sum()) > 0 for g in grads.values())
    state = algo.adapt(batch.support_x[0], batch.support_y[0], 2)
    assert len(state) == 3 and not state[0]["support"].requires_grad
    assert algo.test_steps == 0
    groups = algo.optimizer.param_groups
    assert [g["lr"] for g in groups] == [0.001, 0.1] and len(groups[1]["params"]) == 2


def test_sigmoid_embedding_layer_is_added_on_request() -> None:
    algo = _tiny(embedding_dim=7)
    assert isinstance(algo.twin[-1], torch.nn.Sigmoid) and algo.twin[-2].out_features == 7
    assert algo.distance.raw.shape == (7,) and algo.twin[-2].weight.dtype == torch.float64
    batch = TinySuite(None).sample(1, torch.Generator().manual_seed(0), "train")
    with torch.no_grad():
        emb = algo.adapt(batch.support_x[0], batch.support_y[0], 0)[0]["support"]
    assert emb.shape == (6, 7) and bool(((emb > 0) & (emb < 1)).all())


def test_affine_distortions_move_ink_within_the_papers_ranges() -> None:
    images = torch.zeros(200, 1, 28, 28)
    images[:, :, 10:18, 10:18] = 1.0  # a centred square of ink
    torch.manual_seed(0)
    distorted = affine_distort(images)
    assert distorted.shape == images.shape
    ratio = distorted.sum((1, 2, 3)) / images.sum((1, 2, 3))
    # Area scales by |det| of the linear part: scale in [0.8, 1.2]^2 times 1 - shear_x * shear_y.
    assert bool((ratio > 0.8 * 0.8 * 0.91 - 0.05).all()) and bool((ratio < 1.2 * 1.2 * 1.09 + 0.05).all())
    assert bool((distorted[:, 0, 14, 14] > 0.99).all())  # at most 0.5 pixel of shift: the centre stays ink
    changed = (distorted - images).abs().flatten(1).amax(1) > 0.05
    assert 0.9 < float(changed.float().mean()) < 1.0  # all seven components off: (1/2)^7 of the images
    assert float(affine_distort(torch.zeros(3, 1, 28, 28)).abs().max()) == 0.0


def test_distortions_train_on_images_and_are_refused_elsewhere() -> None:
    algo, suite = _glyphs(ways=3, query=2, distortions=True, pairs=8)
    batch = suite.sample(1, torch.Generator().manual_seed(0), "train")
    assert math.isfinite(algo.meta_train_step(batch))
    assert check_suite(SiameseHparams(distortions=True), "glyphs", GlyphsConfig()) == ""
    assert check_suite(SiameseHparams(), "tiny", object()) == ""
    assert "not an image suite" in check_suite(SiameseHparams(distortions=True), "tiny", object())


def test_hparams_registration_and_ranges() -> None:
    manager = pluggy.PluginManager("harness")
    manager.add_hookspecs(harness.hookspecs)
    manager.register(siamese_module)
    specs = [s for result in manager.hook.harness_register_algorithms() for s in result]
    assert [(s.name, s.hparams, s.task_kinds) for s in specs] == [
        ("siamese", SiameseHparams, frozenset({"classification"}))
    ]
    assert "Koch" in specs[0].paper and specs[0].check is check_suite
    assert resolve_params(SiameseHparams, {"shot_rule": "mean"}, "siamese").shot_rule == "mean"
    for bad, message in (({"shot_rule": "min"}, "shot_rule must be one of max, mean, got 'min'"),
                         ({"pairs": 0}, "pairs must be >= 1"), ({"head_lr": 0.0}, "head_lr must be > 0"),
                         ({"embedding_dim": -1}, "embedding_dim must be >= 0"),
                         ({"weight_decay": 1.5}, r"weight_decay must be a number in \[0, 1\)")):
        with pytest.raises(ValueError, match=message):
            SiameseHparams(**bad)


def test_learns_glyphs_5_way_1_shot() -> None:
    """60 episodes of 64 + 64 pairs lift test accuracy on 50 glyph episodes from 0.82 (random conv4
    features already match glyphs well; chance is 0.2) to 0.93-0.96 over training streams 0-2, about
    15 s on one shared thread."""
    algo, suite = _glyphs()
    test = suite.sample(50, torch.Generator().manual_seed(99), "test")

    def accuracy() -> float:
        with torch.no_grad():
            return sum(float(suite.metric(algo.predict(algo.adapt(test.support_x[i], test.support_y[i], 0)[0],
                                                       test.query_x[i]), test.query_y[i]))
                       for i in range(test.num_tasks)) / test.num_tasks

    before = accuracy()
    generator = torch.Generator().manual_seed(0)
    losses = [algo.meta_train_step(suite.sample(1, generator, "train")) for _ in range(60)]
    after = accuracy()
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.1
    assert after > 0.9, f"accuracy {after:.3f} after 60 episodes (chance 0.2, untrained {before:.3f})"
    assert after > before + 0.05
