"""Fixtures for the bundled plugins' tests: the sinusoid suite, fixed test tasks, train/evaluate helpers."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from harness import Algorithm, TaskBatch
from metaharness_plugins.backends.cpu import CPUBackend
from metaharness_plugins.suites.sinusoid import SinusoidConfig, SinusoidSuite

TEST_SEED = 1234
TEST_TASKS = 200


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    """Run on one intra-op thread: these models are too small to gain from a second one (measured:
    the same ms per iteration), and two processes each spinning two OpenMP threads on two cores
    slowed the training loops here by more than 10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def suite() -> SinusoidSuite:
    return SinusoidSuite(SinusoidConfig())


@pytest.fixture(scope="session")
def backend() -> CPUBackend:
    return CPUBackend()


@pytest.fixture(scope="session")
def test_tasks(suite: SinusoidSuite) -> TaskBatch:
    """A fixed set of test episodes (K = 10 support points, 100 query points each)."""
    return suite.sample(TEST_TASKS, torch.Generator().manual_seed(TEST_SEED), "test")


@pytest.fixture(scope="session")
def evaluate(suite: SinusoidSuite, test_tasks: TaskBatch) -> Callable[[Algorithm, int], torch.Tensor]:
    """evaluate(algo, steps) -> mean query MSE over the test tasks after 0..steps adaptation steps,
    computed as the harness does: adapt under no_grad, one task at a time."""

    def run(algo: Algorithm, steps: int) -> torch.Tensor:
        total = torch.zeros(steps + 1, dtype=torch.float64)
        with torch.no_grad():
            for i in range(test_tasks.num_tasks):
                states = algo.adapt(test_tasks.support_x[i], test_tasks.support_y[i], steps)
                for step, state in enumerate(states):
                    total[step] += float(
                        suite.metric(algo.predict(state, test_tasks.query_x[i]), test_tasks.query_y[i])
                    )
        return total / test_tasks.num_tasks

    return run


@pytest.fixture(scope="session")
def meta_train(suite: SinusoidSuite) -> Callable[[Algorithm, int], list[float]]:
    """meta_train(algo, iterations, seed=0) -> meta-losses; batches of algo.meta_batch_size tasks."""

    def run(algo: Algorithm, iterations: int, seed: int = 0) -> list[float]:
        generator = torch.Generator().manual_seed(seed)
        return [
            algo.meta_train_step(suite.sample(algo.meta_batch_size, generator, "train"))
            for _ in range(iterations)
        ]

    return run


@pytest.fixture(scope="session")
def check_adapt(suite: SinusoidSuite, test_tasks: TaskBatch) -> Callable[[Algorithm, int], None]:
    """Asserts the `adapt` contract: steps+1 detached states, state 0 equals the meta-parameters,
    it works under no_grad, it moves the weights and lowers the support loss, and it leaves the
    meta-parameters alone."""

    def run(algo: Algorithm, steps: int) -> None:
        sx, sy = test_tasks.support_x[0], test_tasks.support_y[0]
        before = algo.state_dict()
        with torch.no_grad():
            states = algo.adapt(sx, sy, steps)
        assert len(states) == steps + 1
        model_params = {k: v for k, v in algo.meta_parameters().items() if k in states[0]}
        assert set(states[0]) == set(model_params)
        for name, tensor in model_params.items():
            assert torch.equal(states[0][name], tensor.detach())
        for state in states:
            assert all(not t.requires_grad for t in state.values())
        assert any(not torch.equal(states[-1][k], states[0][k]) for k in states[0])
        with torch.no_grad():
            first = suite.loss(algo.predict(states[0], sx), sy)
            last = suite.loss(algo.predict(states[-1], sx), sy)
        assert last < first
        # Also outside no_grad: the same numbers, still detached.
        again = algo.adapt(sx, sy, steps)
        for a, b in zip(states, again):
            for name in a:
                assert torch.equal(a[name], b[name])
                assert not b[name].requires_grad
        after = algo.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)

    return run
