"""SNAIL: causality of the temporal-convolution and attention blocks, the cached support prefix against
running every [support, query] sequence whole, shapes and the adapt contract, labels entering only through
their one-hot inputs and logits, finite gradients reaching every parameter, registration, and learning
glyphs."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pluggy
import pytest
import torch

import harness.hookspecs
from harness import TaskBatch
from harness.specs import resolve_params
from metaharness_plugins.algorithms import snail as snail_module
from metaharness_plugins.algorithms._snail import (
    AttentionBlock,
    DenseBlock,
    SNAILNet,
    dense_blocks,
)
from metaharness_plugins.algorithms.snail import SNAIL, SNAILHparams
from metaharness_plugins.backends.cpu import CPUBackend
from metaharness_plugins.fewshot.sequence import SequenceLearner
from tests.plugins.helpers import TinySuite

SMALL = {"tc_filters": 6, "key_size": 4, "value_size": 3}


def _algo(seed: int = 0, **hparams: object) -> SNAIL:
    torch.manual_seed(seed)
    suite = TinySuite(None)
    return SNAIL(SNAILHparams(**{**SMALL, **hparams}), suite.build_model(), suite, CPUBackend())


def _changed_positions(module: torch.nn.Module, x: torch.Tensor, position: int) -> list[int]:
    """The positions whose output changes when the input at `position` does."""
    moved = x.clone()
    generator = torch.Generator().manual_seed(position)
    moved[:, position] += torch.randn(moved[:, position].shape, generator=generator, dtype=x.dtype)
    with torch.no_grad():
        before, after = module(x), module(moved)
    return [t for t in range(x.shape[1]) if not torch.equal(before[:, t], after[:, t])]


BLOCKS = {"dense-d1": DenseBlock(5, 4, 1), "dense-d2": DenseBlock(5, 4, 2), "dense-d4": DenseBlock(5, 4, 4),
          "attention": AttentionBlock(5, 4, 3), "snail": SNAILNet(5, 3, 9, 4, 4, 3)}


@pytest.mark.parametrize("module", BLOCKS.values(), ids=BLOCKS.keys())
def test_a_later_position_never_changes_an_earlier_output(module: torch.nn.Module) -> None:
    module = module.double()
    x = torch.randn(2, 9, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for position in range(9):
        changed = _changed_positions(module, x, position)
        assert changed and min(changed) == position, (position, changed)
    if isinstance(module, DenseBlock):  # a kernel-2 convolution reads t and t - dilation, nothing else
        assert _changed_positions(module, x, 2) == [2, 2 + module.dilation]
        added = module(x)[..., 5:]
        earlier = x[:, 2 - module.dilation] if module.dilation <= 2 else torch.zeros_like(x[:, 2])
        xf, xg = module.conv(torch.cat([earlier, x[:, 2]], -1)).chunk(2, -1)
        assert torch.allclose(added[:, 2], torch.tanh(xf) * torch.sigmoid(xg))
    if isinstance(module, SNAILNet):  # the dilations 1, 2, 4, 8 reach the last position from the first
        assert _changed_positions(module, x, 0) == list(range(9))


def test_attention_is_softmax_over_the_positions_so_far() -> None:
    block = AttentionBlock(5, 4, 3).double()
    x = torch.randn(1, 6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        out = block(x)
        q, k, v = block.query(x)[0], block.key(x)[0], block.value(x)[0]
    for t in range(6):
        weights = torch.softmax(q[t] @ k[: t + 1].T / math.sqrt(4), dim=0)
        assert torch.allclose(out[0, t, 5:], weights @ v[: t + 1])
    assert torch.equal(out[..., :5], x)  # dense connection: the input passes through


def test_the_cached_support_prefix_equals_running_each_query_after_the_support() -> None:
    """`tail` classifies every query as the position after the support sequence, from the support's cached
    features: the same logits as the whole network on [support, that query], query by query."""
    net = SNAILNet(7, 3, 6, 5, 4, 3).double()
    generator = torch.Generator().manual_seed(2)
    for support_length in (1, 3, 5, 8):  # shorter and longer than the sequence the network was sized for
        support = torch.randn(2, support_length, 7, generator=generator, dtype=torch.float64)
        queries = torch.randn(2, 4, 7, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            fast = net.tail(net.features(support), queries)
            for q in range(4):
                whole = net(torch.cat([support, queries[:, q : q + 1]], dim=1))[:, -1]
                assert torch.allclose(fast[:, q], whole, atol=1e-12)


def test_shapes_sizes_and_the_adapt_contract() -> None:
    algo = _algo()
    net = algo.net["sequence"]
    # TinySuite: 6 support examples of width 5 embeddings, 3 ways; T = 7 needs ceil(log2 7) = 3 dense blocks.
    assert dense_blocks(7) == 3 and dense_blocks(2) == 1 and dense_blocks(8) == 3 and dense_blocks(9) == 4
    kinds = [type(b).__name__ for b in net.blocks]
    tc = ["DenseBlock"] * 3
    assert kinds == ["AttentionBlock", *tc, "AttentionBlock", *tc, "AttentionBlock"]
    assert [b.dilation for b in net.blocks if isinstance(b, DenseBlock)] == [1, 2, 4, 1, 2, 4]
    sizes = [(b.key.out_features, b.value.out_features) for b in net.blocks if isinstance(b, AttentionBlock)]
    assert sizes == [(4, 3), (16, 12), (32, 24)]  # the paper's 1x, 4x, 8x
    assert net.out.in_features == 5 + 3 + 3 + 6 * 3 + 12 + 6 * 3 + 24
    assert algo.describe() == {"sequence_length": 7, "dense_blocks_per_tc": 3,
                               "channels": net.out.in_features}
    check_adapt_contract(algo)
    check_training_loss_is_the_test_path(_algo(shuffle_support=False))
    defaults = SNAILHparams()
    paper = SNAIL(defaults, TinySuite(None).build_model(), TinySuite(None), CPUBackend()).net["sequence"]
    attention = [b for b in paper.blocks if isinstance(b, AttentionBlock)]
    sizes = [(b.key.out_features, b.value.out_features) for b in attention]
    assert sizes == [(64, 32), (256, 128), (512, 256)]
    assert {b.added for b in paper.blocks if isinstance(b, DenseBlock)} == {128}


def test_each_query_is_classified_from_the_support_alone() -> None:
    check_queries_independent(_algo())


def test_labels_enter_only_through_their_one_hot_inputs_and_the_logits() -> None:
    """Relabelling the support classes by a permutation, with the weights that read the label one-hots
    (channels 5..7 of every block's input, after the 5-wide embedding) and the logits permuted alike, gives
    exactly the permuted logits: nothing else in the network knows a label's index."""
    algo = _algo()
    net = algo.net["sequence"]

    def permute_weights(inverse: torch.Tensor) -> None:
        def columns(weight: torch.Tensor, start: int) -> None:
            weight[:, start : start + 3] = weight[:, start : start + 3][:, inverse].clone()

        for block in net.blocks:
            if isinstance(block, AttentionBlock):
                for layer in (block.query, block.key, block.value):
                    columns(layer.weight, 5)
            else:  # both taps of the convolution read the labels
                columns(block.conv.weight, 5)
                columns(block.conv.weight, block.channels + 5)
        columns(net.out.weight, 5)
        net.out.weight.copy_(net.out.weight[inverse].clone())
        net.out.bias.copy_(net.out.bias[inverse].clone())

    check_label_equivariance(algo, permute_weights)


def test_gradients_are_finite_and_reach_every_parameter() -> None:
    check_gradients(_algo(meta_batch_size=3, shuffle_support=True))


def test_hparams_and_registration() -> None:
    manager = pluggy.PluginManager("harness")
    manager.add_hookspecs(harness.hookspecs)
    manager.register(snail_module)
    (spec,) = [s for result in manager.hook.harness_register_algorithms() for s in result]
    assert (spec.name, spec.hparams) == ("snail", SNAILHparams)
    assert spec.task_kinds == frozenset({"classification"})
    assert "Mishra" in spec.paper and spec.factory.resolve() is SNAIL
    assert resolve_params(SNAILHparams, {"tc_filters": 32}, "snail").tc_filters == 32
    for bad, message in (({"tc_filters": 0}, "tc_filters must be >= 1"),
                         ({"key_size": 0}, "key_size must be >= 1"),
                         ({"meta_lr": -1.0}, "meta_lr must be > 0"),
                         ({"meta_batch_size": 0}, "meta_batch_size must be >= 1")):
        with pytest.raises(ValueError, match=message):
            SNAILHparams(**bad)
    suite = TinySuite(None)
    with pytest.raises(TypeError, match="snail needs the suite's model to be an nn.Sequential ending in"):
        SNAIL(SNAILHparams(), torch.nn.Linear(4, 3), suite, CPUBackend())


@pytest.mark.slow
def test_learns_glyphs_5_way_1_shot_and_relabels_consistently() -> None:
    """400 steps of 4 episodes (about 3 minutes on a shared CPU): accuracy 0.20 -> 0.42 (chance 0.2), and the
    predictions that follow a relabelling of the support classes 0.001 -> 0.46 (a half-trained network; the
    harness's glyphs runs reach 0.91 after 1,000 steps and 0.97 after 2,750 at 28x28)."""
    measured = learn_glyphs(SNAIL, SNAILHparams(meta_batch_size=4), iterations=400)
    assert measured["after"] > 0.32, measured
    assert measured["agreement"] > max(0.35, measured["agreement_before"] + 0.15), measured


# --- checks shared with the memory-augmented network's tests (tests/plugins/test_mann.py) ---------------


def tiny_batch(n: int = 1, seed: int = 0) -> TaskBatch:
    return TinySuite(None).sample(n, torch.Generator().manual_seed(seed), "train")


def check_adapt_contract(algo: SequenceLearner) -> None:
    """steps+1 copies of one detached state, inside no_grad or not; logits [queries, ways]; nothing moved."""
    batch = tiny_batch()
    sx, sy, qx = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    before = algo.state_dict()
    assert algo.test_steps == 0
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            states = algo.adapt(sx, sy, 2)
        assert len(states) == 3 and all(s is states[0] for s in states)
        assert all(not t.requires_grad for t in states[0].values())
    with torch.no_grad():
        assert algo.predict(states[0], qx).shape == (6, 3)
    assert all(torch.equal(before[k], v) for k, v in algo.state_dict().items())


def check_training_loss_is_the_test_path(algo: SequenceLearner) -> None:
    """Without shuffling, the meta-training loss is the mean over episodes of the suite's loss of what
    `adapt` then `predict` give (the same sequences, batched)."""
    batch = tiny_batch(3, seed=4)
    with torch.no_grad():
        expected = []
        for i in range(3):
            state = algo.adapt(batch.support_x[i], batch.support_y[i], 0)[0]
            expected.append(algo.suite.loss(algo.predict(state, batch.query_x[i]), batch.query_y[i]))
        assert torch.allclose(algo.meta_loss(batch), torch.stack(expected).mean())


def check_queries_independent(algo: SequenceLearner) -> None:
    """A query's logits do not depend on the other queries; they do depend on the support set."""
    batch = tiny_batch(seed=1)
    sx, sy, qx = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    with torch.no_grad():
        state = algo.adapt(sx, sy, 0)[0]
        together = algo.predict(state, qx)
        for i in range(len(qx)):
            assert torch.allclose(algo.predict(state, qx[i : i + 1])[0], together[i])
        assert not torch.allclose(algo.predict(algo.adapt(sx, sy.roll(1), 0)[0], qx), together)
        assert not torch.allclose(algo.predict(algo.adapt(sx + 0.3, sy, 0)[0], qx), together)


def check_label_equivariance(algo: SequenceLearner, permute_weights: Callable[[torch.Tensor], None]) -> None:
    """Relabel the support by y -> perm[y] and let `permute_weights(inverse)` reorder every weight that
    reads a label one-hot (columns) and the logits (rows): the logits come out permuted, exactly."""
    batch = tiny_batch(seed=2)
    sx, sy, qx = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    perm = torch.tensor([2, 0, 1])
    inverse = torch.argsort(perm)
    with torch.no_grad():
        logits = algo.predict(algo.adapt(sx, sy, 0)[0], qx)
        permute_weights(inverse)
        relabelled = algo.predict(algo.adapt(sx, perm[sy], 0)[0], qx)
    assert torch.allclose(relabelled[:, perm], logits, atol=1e-12)
    assert not torch.allclose(relabelled, logits)


def check_gradients(algo: SequenceLearner) -> None:
    """The meta-gradient is finite and non-zero for every meta-parameter; a step moves the loss."""
    batch = tiny_batch(3, seed=3)
    loss, grads = algo.meta_gradient(batch)
    assert math.isfinite(loss)
    for name, grad in grads.items():
        assert bool(torch.isfinite(grad).all()), name
        assert float(grad.abs().max()) > 0, f"no gradient reaches {name}"
    losses = [algo.meta_train_step(batch) for _ in range(20)]
    assert losses[-1] < losses[0]


def learn_glyphs(factory: type, hparams: Any, iterations: int, **config: Any) -> dict[str, float]:
    """Meta-train on glyphs (5-way 1-shot, 16x16, 5 queries per class) and return the accuracy on 100 test
    episodes and the agreement, before and after: the fraction of queries whose prediction follows a
    relabelling of the support classes (every class renamed by a derangement, so a learner that ignores
    the labels agrees on none)."""
    from metaharness_plugins.suites._glyphs import GlyphsSuite
    from metaharness_plugins.suites.glyphs import GlyphsConfig

    suite = GlyphsSuite(GlyphsConfig(**{"ways": 5, "shots": 1, "query": 5, "image_size": 16, **config}))
    torch.manual_seed(0)
    algo = factory(hparams, suite.build_model(), suite, CPUBackend())
    test = suite.sample(100, torch.Generator().manual_seed(11), "test")
    perm = torch.tensor([1, 2, 3, 4, 0])

    def measure() -> tuple[float, float]:
        hits = agree = 0.0
        with torch.no_grad():
            for i in range(test.num_tasks):
                sx, sy, qx, qy = test.support_x[i], test.support_y[i], test.query_x[i], test.query_y[i]
                predicted = algo.predict(algo.adapt(sx, sy, 0)[0], qx).argmax(-1)
                renamed = algo.predict(algo.adapt(sx, perm[sy], 0)[0], qx).argmax(-1)
                hits += float((predicted == qy).float().mean())
                agree += float((renamed == perm[predicted]).float().mean())
        return hits / test.num_tasks, agree / test.num_tasks

    before, agreement_before = measure()
    generator = torch.Generator().manual_seed(0)
    for _ in range(iterations):
        algo.meta_train_step(suite.sample(algo.meta_batch_size, generator, "train"))
    after, agreement = measure()
    return {"before": before, "agreement_before": agreement_before, "after": after, "agreement": agreement}
