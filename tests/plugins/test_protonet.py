"""Prototypical Networks: logits against hand-computed distances to class means, the embedding split,
the meta-update, registration, and learning 5-way 1-shot on the real Omniglot small sets."""

from __future__ import annotations

import pluggy
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import harness.hookspecs
from harness.specs import resolve_params
from metaharness_plugins.algorithms import protonet as protonet_module
from metaharness_plugins.algorithms.protonet import ProtoNet, ProtoNetHparams
from metaharness_plugins.backends.cpu import CPUBackend
from tests.plugins.helpers import DATA, TinySuite, require_omniglot


def _algo(**hparams: object) -> ProtoNet:
    torch.manual_seed(3)
    suite = TinySuite(None)
    return ProtoNet(ProtoNetHparams(**hparams), suite.build_model(), suite, CPUBackend())


def test_logits_are_minus_squared_distances_to_class_means() -> None:
    algo = _algo()
    batch = TinySuite(None).sample(1, torch.Generator().manual_seed(0), "train")
    sx, sy, qx = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    lin = algo.embedding[0]
    embed = lambda x: torch.tanh(x @ lin.weight.T + lin.bias)  # noqa: E731
    means = torch.stack([embed(sx)[sy == k].mean(0) for k in range(3)])
    expected = torch.stack([torch.stack([-((q - c) ** 2).sum() for c in means]) for q in embed(qx)])
    with torch.no_grad():
        states = algo.adapt(sx, sy, 0)
        logits = algo.predict(states[0], qx)
    assert len(states) == 1 and torch.allclose(states[0]["prototypes"], means)
    assert torch.allclose(logits, expected)
    # test_steps is 0; asked for steps anyway, the same prototypes come back steps + 1 times.
    assert algo.test_steps == 0 and len(algo.adapt(sx, sy, 2)) == 3
    assert not states[0]["prototypes"].requires_grad
    assert not algo.adapt(sx, sy, 0)[0]["prototypes"].requires_grad  # outside no_grad too


def test_cosine_distance_gives_cosine_similarities() -> None:
    algo = _algo(distance="cosine")
    batch = TinySuite(None).sample(1, torch.Generator().manual_seed(1), "train")
    sx, sy, qx = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    with torch.no_grad():
        protos = algo.adapt(sx, sy, 0)[0]["prototypes"]
        logits = algo.predict({"prototypes": protos}, qx)
        emb = algo.embedding(qx)
    expected = F.cosine_similarity(emb.unsqueeze(1), protos.unsqueeze(0), dim=-1)
    assert torch.allclose(logits, expected)


def test_embedding_drops_the_classifier_and_other_models_are_refused() -> None:
    algo = _algo()
    assert set(algo.meta_parameters()) == {"0.weight", "0.bias"}
    suite = TinySuite(None)
    with pytest.raises(TypeError, match="nn.Sequential ending in an nn.Linear.*ending in ReLU"):
        ProtoNet(ProtoNetHparams(), nn.Sequential(nn.Linear(4, 3), nn.ReLU()), suite, CPUBackend())
    with pytest.raises(TypeError, match="got Linear"):
        ProtoNet(ProtoNetHparams(), nn.Linear(4, 3), suite, CPUBackend())


def test_meta_training_lowers_the_loss_and_vmap_matches_the_loop() -> None:
    batch = TinySuite(None).sample(4, torch.Generator().manual_seed(2), "train")
    looped, vmapped = _algo(meta_batch_size=4, meta_lr=0.03), _algo(meta_batch_size=4, vmap_tasks=True)
    assert torch.allclose(looped.meta_loss(batch), vmapped.meta_loss(batch))
    losses = [looped.meta_train_step(batch) for _ in range(30)]
    assert losses[-1] < losses[0] - 0.2  # one fixed batch: fitted


def test_hparams_registration_and_ranges() -> None:
    manager = pluggy.PluginManager("harness")
    manager.add_hookspecs(harness.hookspecs)
    manager.register(protonet_module)
    specs = [s for result in manager.hook.harness_register_algorithms() for s in result]
    assert [(s.name, s.hparams, s.task_kinds) for s in specs] == [
        ("protonet", ProtoNetHparams, frozenset({"classification"}))
    ]
    defaults = ProtoNetHparams()
    assert (defaults.meta_lr, defaults.meta_batch_size, defaults.distance) == (0.001, 1, "euclidean")
    assert resolve_params(ProtoNetHparams, {"distance": "cosine"}, "protonet").distance == "cosine"
    with pytest.raises(ValueError, match="distance must be one of euclidean, cosine"):
        ProtoNetHparams(distance="manhattan")
    with pytest.raises(ValueError, match="meta_lr must be > 0"):
        ProtoNetHparams(meta_lr=0.0)


def test_learns_omniglot_5_way_1_shot() -> None:
    """60 episodes (Adam 1e-3, one episode per step, the paper's settings) lift test accuracy on 50
    episodes from 0.45 (untrained conv4: random features already beat chance, 0.2) to 0.61-0.64 over
    seeds 0-2, about 4 s on one thread (about 45 ms per episode)."""
    require_omniglot()
    pytest.importorskip("PIL")
    from metaharness_plugins.suites.omniglot import OmniglotConfig, OmniglotSuite

    suite = OmniglotSuite(OmniglotConfig(ways=5, shots=1, query=5, data_root=str(DATA)))
    torch.manual_seed(0)
    algo = ProtoNet(ProtoNetHparams(), suite.build_model(), suite, CPUBackend())
    test = suite.sample(50, torch.Generator().manual_seed(99), "test")

    def accuracy() -> float:
        with torch.no_grad():
            return sum(float(suite.metric(algo.predict(algo.adapt(test.support_x[i], test.support_y[i], 0)[0],
                                                       test.query_x[i]), test.query_y[i]))
                       for i in range(test.num_tasks)) / test.num_tasks

    before = accuracy()
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        algo.meta_train_step(suite.sample(1, generator, "train"))
    after = accuracy()
    assert after > 0.55, f"accuracy {after:.3f} after 60 episodes (chance 0.2, untrained {before:.3f})"
    assert after > before + 0.08
