"""The hypernetwork: its hyper-parameters' checks, what each `generate` mode produces, permutation
invariance of both set encoders, torch.autograd.gradcheck of the meta-gradient in float64, forward mode and
checkpointing against reverse mode, `adapt`, classification on images, and learning linear-regression tasks
toward the least-squares oracle."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.func import functional_call

from harness.registry import build_plugin_manager
from metaharness_plugins.algorithms._closed_form import LeastSquares
from metaharness_plugins.algorithms._hypernet import HyperNet
from metaharness_plugins.algorithms.closed_form import LeastSquaresHparams
from metaharness_plugins.algorithms.hypernet import HyperNetHparams, check
from metaharness_plugins.suites._glyphs import GlyphsSuite
from metaharness_plugins.suites._linear_regression import LinearRegressionSuite
from metaharness_plugins.suites.glyphs import GlyphsConfig
from metaharness_plugins.suites.linear_regression import LinearRegressionConfig
from tests.plugins.helpers import TinySuite

TINY = {"hidden": 4, "latent": 3, "heads": 2, "meta_batch_size": 2}
MODES = [(encoder, generate) for encoder in ("deepsets", "attention") for generate in ("all", "head", "film")]


def regression(**config) -> LinearRegressionSuite:
    return LinearRegressionSuite(LinearRegressionConfig(**{"dim": 2, "hidden": (3,), "shots": 3, "query": 2,
                                                           **config}))


def build(suite, backend, seed: int = 0, randomise: bool = True, **hparams) -> HyperNet:
    """A float64 hypernetwork on `suite`; with `randomise` its decoder starts away from zero, so that every
    path from the support set to the parameters carries gradient."""
    torch.manual_seed(seed)
    algo = HyperNet(HyperNetHparams(**{**TINY, **hparams}), suite.build_model().double(), suite, backend)
    if randomise:
        with torch.no_grad():
            algo.net.decoder.weight.normal_(0.0, 0.3)
    return algo


def batch_of(suite, n: int = 2, seed: int = 0):
    batch = suite.sample(n, torch.Generator().manual_seed(seed), "train")
    cast = (lambda t: t.double()) if batch.support_y.is_floating_point() else (lambda t: t)
    return type(batch)(batch.support_x.double(), cast(batch.support_y), batch.query_x.double(),
                       cast(batch.query_y))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("encoder", "lstm", "encoder must be one of deepsets, attention"),
    ("generate", "body", "generate must be one of all, head, film"),
    ("hypergradient", "mixed", "hypergradient must be one of reverse, forward"),
    ("hidden", 0, "hidden must be >= 1"), ("latent", 0, "latent must be >= 1"),
    ("meta_lr", 0.0, "meta_lr must be > 0"),
    ("test_steps", -1, "test_steps must be None .* or >= 0"), ("hidden", 10**6, "hidden must be at most"),
])
def test_bad_hyper_parameters_say_what_is_valid(field, value, message):
    with pytest.raises(ValueError, match=message):
        HyperNetHparams(**{field: value})


def test_combinations_that_cannot_work_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="multiple of heads"):
        HyperNetHparams(encoder="attention", hidden=10, heads=4)
    with pytest.raises(ValueError, match="checkpoint=true has nothing to save"):
        HyperNetHparams(checkpoint=True, hypergradient="forward")
    with pytest.raises(ValueError, match="needs inner_steps=0"):
        HyperNetHparams(inner_steps=1, hypergradient="forward")
    linear = LinearRegressionConfig(model="linear")
    assert "has none" in check(HyperNetHparams(generate="film"), "linear-regression", linear)
    assert check(HyperNetHparams(generate="head"), "linear-regression", linear) == ""


def test_registered_for_regression_and_classification_naming_its_papers():
    spec = build_plugin_manager(entry_points=False).algorithms["hypernet"].spec
    assert spec.task_kinds == frozenset({"regression", "classification"})
    assert "HyperNetworks" in spec.paper and "Deep Sets" in spec.paper and "Set Transformer" in spec.paper
    assert spec.factory.resolve() is HyperNet


@pytest.mark.parametrize("generate", ["all", "head", "film"])
def test_each_mode_generates_the_whole_parameter_dict_starting_at_the_models_own(backend, generate):
    suite = regression()
    algo = build(suite, backend, randomise=False, generate=generate)
    batch = batch_of(suite)
    model = dict(algo.model.named_parameters())
    generated = algo.net(batch.support_x[0], batch.support_y[0])
    assert {k: tuple(v.shape) for k, v in generated.items()} == {k: tuple(v.shape) for k, v in model.items()}
    for name in model:  # the decoder starts at zero: every task gets the suite's initial network
        torch.testing.assert_close(generated[name], model[name], rtol=0, atol=0)
    expected = {"all": sum(p.numel() for p in model.values()), "head": 3 + 1, "film": 2 * 3}[generate]
    assert algo.describe()["generated_parameters"] == expected
    # The meta-parameters: the hypernetwork, plus the body where the model is not generated whole.
    names = set(algo.meta_parameters())
    body = {f"body.{n}" for n in model}
    assert {"all": names.isdisjoint(body), "head": names & body == {"body.0.weight", "body.0.bias"},
            "film": body <= names}[generate]


def test_film_scales_and_shifts_hidden_units(backend):
    suite = regression()
    algo = build(suite, backend, generate="film")
    batch = batch_of(suite)
    sx, sy, qx = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    gamma, beta = algo.net.decoder(algo.net.embed(sx, sy)).chunk(2)
    generated = algo.net(sx, sy)
    body = algo.model
    hidden = torch.relu((1 + gamma) * (qx @ body[0].weight.T + body[0].bias) + beta)
    torch.testing.assert_close(algo.predict(generated, qx), hidden @ body[2].weight.T + body[2].bias)
    with pytest.raises(TypeError, match="has none"):
        build(regression(model="linear"), backend, generate="film")


@pytest.mark.parametrize(("encoder", "generate"), MODES)
def test_the_generated_parameters_ignore_the_order_of_the_support_set(backend, encoder, generate):
    suite = regression(shots=7)
    algo = build(suite, backend, encoder=encoder, generate=generate)
    batch = batch_of(suite)
    sx, sy = batch.support_x[0], batch.support_y[0]
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(1))
    a, b = algo.net(sx, sy), algo.net(sx[perm], sy[perm])
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-12, atol=1e-12)
    moved = algo.net(sx, sy + torch.eye(7, 1, dtype=sy.dtype))  # and they do depend on the data
    assert any(not torch.allclose(a[n], moved[n]) for n in a)


@pytest.mark.parametrize("encoder", ["deepsets", "attention"])
def test_a_classifier_head_is_generated_class_by_class(backend, encoder):
    """Row c of the generated head depends on class c's support examples alone: shuffling the support set
    changes nothing, relabelling the classes permutes the rows, and a class's row moves only with its data."""
    suite = TinySuite(None)
    algo = build(suite, backend, encoder=encoder, generate="head")
    batch = batch_of(suite)
    sx, sy = batch.support_x[0], batch.support_y[0]
    head = algo.net(sx, sy)
    assert head["2.weight"].shape == (3, 5) and algo.describe()["generated_parameters"] == 3 * 6
    perm = torch.tensor([4, 0, 3, 5, 1, 2])
    shuffled = algo.net(sx[perm], sy[perm])
    relabel = torch.tensor([2, 0, 1])  # class c becomes relabel[c]
    renamed = algo.net(sx, relabel[sy])
    for name in ("2.weight", "2.bias"):
        torch.testing.assert_close(shuffled[name], head[name], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(renamed[name][relabel], head[name], rtol=1e-12, atol=1e-12)
    moved = algo.net(torch.where((sy == 1)[:, None], sx + 1.0, sx), sy)
    changed = [not torch.allclose(moved["2.weight"][c], head["2.weight"][c]) for c in range(3)]
    assert changed == [False, True, False]


def query_loss_of(algo: HyperNet, batch):
    """The meta-loss as a function of the meta-parameter tensors (for gradcheck), through the algorithm's
    own `generated_loss`."""
    names = list(algo.meta_parameters())

    def loss(*tensors: torch.Tensor) -> torch.Tensor:
        theta = dict(zip(names, tensors))
        losses = []
        for t in range(batch.num_tasks):
            sx, sy = batch.support_x[t], batch.support_y[t]
            generated = functional_call(algo.net, theta, (sx, sy))
            losses.append(algo.generated_loss(generated, batch.query_x[t], batch.query_y[t], sx, sy))
        return torch.stack(losses).mean()

    return loss, [p.detach().clone().requires_grad_() for p in algo.meta_parameters().values()]


#: Each mode with the Deep Sets encoder, the Set Transformer once (the decoder after it is the same code), and
#: a differentiated inner step.
GRADCHECKED = [("deepsets", "all", 0), ("deepsets", "head", 0), ("deepsets", "film", 0),
               ("attention", "all", 0), ("deepsets", "all", 1)]


@pytest.mark.parametrize(("encoder", "generate", "inner_steps"), GRADCHECKED)
def test_the_meta_gradient_passes_gradcheck_in_float64(backend, encoder, generate, inner_steps):
    suite = regression()
    algo = build(suite, backend, encoder=encoder, generate=generate, inner_steps=inner_steps, inner_lr=0.1)
    batch = batch_of(suite)
    loss, inputs = query_loss_of(algo, batch)
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)
    # The algorithm's own meta-gradient is that gradient.
    value, grads = algo.meta_gradient(batch)
    expected = torch.autograd.grad(loss(*inputs), inputs)
    assert value == pytest.approx(float(loss(*inputs).detach()), rel=1e-12)
    for got, want in zip(grads.values(), expected):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("generate", ["head", "film"])
def test_classification_gradcheck(backend, generate):
    suite = TinySuite(None)
    algo = build(suite, backend, generate=generate)
    loss, inputs = query_loss_of(algo, batch_of(suite))
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize(("generate", "vmap"),
                         [("all", True), ("head", False), ("film", True), ("film", False)])
def test_forward_mode_gives_the_reverse_mode_meta_gradient(backend, generate, vmap):
    suite = regression()
    batch = batch_of(suite, n=3)
    reverse = build(suite, backend, generate=generate, vmap_tasks=vmap)
    forward = build(suite, backend, generate=generate, vmap_tasks=vmap, hypergradient="forward")
    (value_r, grad_r), (value_f, grad_f) = reverse.meta_gradient(batch), forward.meta_gradient(batch)
    assert value_f == pytest.approx(value_r, rel=1e-12)
    assert grad_f.keys() == grad_r.keys()
    for name in grad_r:
        torch.testing.assert_close(grad_f[name], grad_r[name], rtol=1e-9, atol=1e-12)
    assert any(float(g.abs().max()) > 1e-3 for g in grad_r.values())


def test_forward_mode_on_classification_matches_too(backend):
    suite = TinySuite(None)
    batch = batch_of(suite)
    reverse, forward = (build(suite, backend, generate="head", hypergradient=h)
                        for h in ("reverse", "forward"))
    for got, want in zip(forward.meta_gradient(batch)[1].values(), reverse.meta_gradient(batch)[1].values()):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("inner_steps", [0, 1])
def test_checkpointing_changes_nothing_but_memory(backend, inner_steps):
    suite = regression()
    batch = batch_of(suite, n=3)
    plain = build(suite, backend, inner_steps=inner_steps, vmap_tasks=False)
    saved = build(suite, backend, inner_steps=inner_steps, checkpoint=True)
    assert saved.vmap_tasks is False and saved.describe()["tasks"] == "looped"
    for got, want in zip(saved.meta_gradient(batch)[1].values(), plain.meta_gradient(batch)[1].values()):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)


def saved_activation_bytes(algo: HyperNet, batch) -> int:
    """Bytes of the tensors autograd saves for the backward pass of the meta-loss, parameters left out
    (distinct storages, so a weight saved by every task counts once)."""
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        algo.meta_loss(batch)
    params = {p.untyped_storage().data_ptr() for p in algo.meta_parameters().values()}
    return sum(n for ptr, n in saved.items() if ptr not in params)


def test_checkpointing_stores_no_activations_of_the_generated_network(backend):
    """Autograd's saved tensors: the generated network's activations on 4 tasks x 500 query points (64-unit
    layers) are what dominates without checkpointing; with it, what is left is the encoder's."""
    suite = LinearRegressionSuite(LinearRegressionConfig(dim=2, hidden=(64, 64), query=500))
    batch = suite.sample(4, torch.Generator().manual_seed(0), "train")
    sizes = {}
    for checkpoint in (False, True):
        torch.manual_seed(0)
        hparams = HyperNetHparams(checkpoint=checkpoint, vmap_tasks=False, meta_batch_size=4)
        algo = HyperNet(hparams, suite.build_model(), suite, backend)
        sizes[checkpoint] = saved_activation_bytes(algo, batch)
    # tasks x points x units x 2 hidden ReLU outputs (which the next Linear saves too) x float32
    activations = 4 * 500 * 64 * 2 * 4
    assert sizes[False] - sizes[True] >= activations
    assert sizes[True] < 0.1 * sizes[False]


def test_vmapped_and_looped_tasks_agree(backend):
    suite = regression()
    batch = batch_of(suite, n=3)
    a = build(suite, backend, encoder="attention", vmap_tasks=True).meta_gradient(batch)[1]
    b = build(suite, backend, encoder="attention", vmap_tasks=False).meta_gradient(batch)[1]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-10, atol=1e-13)


def test_adapt_returns_the_generated_parameters_then_fine_tuning_steps(backend):
    suite = regression()
    algo = build(suite, backend, inner_lr=0.1, test_steps=3)
    batch = batch_of(suite)
    sx, sy = batch.support_x[0], batch.support_y[0]
    before = algo.state_dict()
    with torch.no_grad():
        states = algo.adapt(sx, sy, 3)
    assert len(states) == 4 and algo.test_steps == 3
    generated = algo.net(sx, sy)
    for name in generated:
        torch.testing.assert_close(states[0][name], generated[name].detach(), rtol=0, atol=0)
    assert all(not t.requires_grad for s in states for t in s.values())
    losses = [float(suite.loss(algo.predict(s, sx), sy)) for s in states]
    assert losses[3] < losses[0]
    assert len(algo.adapt(sx, sy, 0)) == 1
    # Tested as trained: by default as many steps as at meta-train.
    assert build(suite, backend).test_steps == 0 and build(suite, backend, inner_steps=2).test_steps == 2
    assert all(torch.equal(before[k], v) for k, v in algo.state_dict().items())


@pytest.mark.parametrize("generate", ["film", "head"])
def test_image_classification(backend, generate):
    """FiLM (and "all") embed the images with a small conv net of their own; a class-wise head embeds
    them with the body it generates the head for."""
    suite = GlyphsSuite(GlyphsConfig(ways=3, shots=1, query=2, image_size=16, num_classes=48))
    torch.manual_seed(0)
    hparams = HyperNetHparams(generate=generate, meta_batch_size=2)
    algo = HyperNet(hparams, suite.build_model(), suite, backend)
    assert ("features.net.0.weight" in algo.meta_parameters()) == (generate == "film")
    batch = suite.sample(2, torch.Generator().manual_seed(0), "train")
    before = algo.state_dict()
    loss = algo.meta_train_step(batch)
    assert np.isfinite(loss)
    assert not torch.equal(before["decoder.weight"], algo.state_dict()["decoder.weight"])
    state = algo.adapt(batch.support_x[0], batch.support_y[0], 0)[0]
    assert algo.predict(state, batch.query_x[0]).shape == (6, 3)
    with pytest.raises(ValueError, match="vector inputs"):
        HyperNet(HyperNetHparams(), suite.build_model(), VideoSuite(None), backend)


class VideoSuite(TinySuite):
    """Support inputs of five dimensions per point, which the hypernetwork has no embedding for."""

    def sample(self, n_tasks, generator, split):
        batch = super().sample(n_tasks, generator, split)
        return dataclasses.replace(batch, support_x=torch.zeros(n_tasks, 6, 2, 2, 2, 2))


def mean_mse(algo, suite, batch) -> float:
    errors = []
    for i in range(batch.num_tasks):
        state = algo.adapt(batch.support_x[i], batch.support_y[i], 0)[-1]
        with torch.no_grad():
            errors.append(float(suite.metric(algo.predict(state, batch.query_x[i]), batch.query_y[i])))
    return float(np.mean(errors))


def test_it_learns_linear_regression_toward_the_least_squares_oracle(backend):
    """Meta-trained on 1-d linear tasks (K = 10, noise 0.1) for 400 iterations, the support set -> weights map
    closes most of the gap between the untrained network and least squares on each task's support set."""
    suite = LinearRegressionSuite(LinearRegressionConfig(dim=1, model="linear"))
    test = suite.sample(200, torch.Generator().manual_seed(1), "test")
    torch.manual_seed(0)
    algo = HyperNet(HyperNetHparams(meta_lr=0.003), suite.build_model(), suite, backend)
    oracle = mean_mse(LeastSquares(LeastSquaresHparams(), suite.build_model(), suite, backend), suite, test)
    untrained = mean_mse(algo, suite, test)
    generator = torch.Generator().manual_seed(0)
    for _ in range(400):
        algo.meta_train_step(suite.sample(algo.meta_batch_size, generator, "train"))
    trained = mean_mse(algo, suite, test)
    print(f"least squares {oracle:.4f}, untrained {untrained:.4f}, after 400 iterations {trained:.4f}")
    assert oracle < 0.01 < 0.5 < untrained
    assert trained - oracle < 0.1 * (untrained - oracle)
