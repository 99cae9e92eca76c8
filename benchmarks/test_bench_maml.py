"""Second-order MAML per meta-iteration, native against learn2learn's, torchmeta's, higher's and TorchOpt's, on real Omniglot: conv4, 5-way
1-shot, 5 query images per class, meta-batch 16, one inner step (inner_lr 0.4), at one and two threads.

The results file benchmarks/results/maml-cpu.json is committed; it was written by

    python -m pytest benchmarks/test_bench_maml.py --benchmark-enable --benchmark-only \
        --benchmark-json=benchmarks/results/maml-cpu.json --benchmark-columns=min,median,iqr,rounds

on a 2-core CPU shared with other jobs. Two kinds of entries:

- `test_meta_iteration[threads-name]`: pytest-benchmark's statistics of `meta_train_step` of `maml`
  (native), `l2l-maml`, `tm-maml`, `higher-maml` and `torchopt-maml` on one fixed batch and model (the
  same weights), one after the other;
- `test_side_by_side[threads]`: the two alternated round by round, with the native's plain
  `functional_call` path as a third (`maml-plain`: the default before harness.sequential); the
  machine's load drifts, so the ratios of medians measured side by side are the figures to quote.
  extra_info: the medians, the ratios, the FLOPs of one meta-iteration (torch.utils.flop_counter: convolutions and matrix products),
  the GFLOP/s each achieves, the roof measured at that thread count (a 64-to-64 3x3 convolution of a
  batch of 160 14x14 maps, the bulk of conv4's work, default and channels-last layouts), and how far
  each float32 meta-gradient is from the float64 one (the native's fast path and its plain
  `functional_call` path both), and where the time goes: `torch.profiler`'s share of each
  implementation's operator time spent in convolution kernels (forward and backward), times its median,
  gives `<name>_conv_s`; `native_conv_floor_over_l2l`, the native's convolution time over l2l-maml's
  whole meta-iteration, is the ratio the native could reach if batch norm, pooling, ReLU, the
  element-wise work and autograd itself cost nothing.

Skipped when the Omniglot small sets are not found ($HARNESS_DATA, else the shared data folder beside
the repository) or learn2learn is not installed. These are measurements, not tests: nothing here
asserts a time.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

pytest.importorskip("PIL", reason="the Omniglot suite decodes PNG with Pillow (pip install pillow)")
pytest.importorskip("learn2learn", reason="learn2learn is not installed (make learn2learn)")
from harness import TaskBatch
from harness.registry import build_plugin_manager
from harness.specs import resolve_params
from metaharness_plugins.suites.omniglot import OmniglotConfig, OmniglotSuite, check_data

TASKS = 16
HPARAMS = {"inner_lr": 0.4, "inner_steps": 1, "meta_batch_size": TASKS}
NATIVE = {**HPARAMS, "vmap_tasks": False}
#: The native MAML and every peer library's, with the native hyper-parameters, on the same batch and weights.
ALGORITHMS = {"maml": NATIVE, "l2l-maml": HPARAMS, "tm-maml": HPARAMS, "higher-maml": HPARAMS,
              "torchopt-maml": HPARAMS}
THREADS = (1, 2)
ROUNDS = 15  # side by side: rounds of each
#: The ATen operators that run convolution kernels on the CPU (oneDNN forward; every backward).
CONV_KERNELS = {"aten::mkldnn_convolution", "aten::convolution_backward", "aten::_slow_conv2d_forward",
                "aten::_slow_conv2d_backward", "aten::thnn_conv2d"}
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REGISTRY = build_plugin_manager(entry_points=False)


@pytest.fixture(scope="module")
def episodes(tmp_path_factory: pytest.TempPathFactory) -> tuple[OmniglotSuite, TaskBatch]:
    """The suite (decoded once into a cache of this session) and one meta-batch of training episodes."""
    data = os.environ.get("HARNESS_DATA") or str(SHARED_DATA)
    config = OmniglotConfig(ways=5, shots=1, query=5, download="never", data_root=str(Path(data) / "omniglot"),
                            cache_dir=str(tmp_path_factory.mktemp("omniglot-cache")))
    reason = check_data(config)
    if reason:
        pytest.skip(f"no Omniglot small background sets: {reason}")
    suite = OmniglotSuite(config)
    return suite, suite.sample(TASKS, torch.Generator().manual_seed(0), "train")


@pytest.fixture
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _build(name: str, suite: OmniglotSuite, dtype: torch.dtype = torch.float32) -> Any:
    torch.manual_seed(0)  # the same conv4 initialisation for every algorithm
    spec = REGISTRY.algorithm(name).spec
    return spec.factory(hparams=resolve_params(spec.hparams, ALGORITHMS[name], name),
                        model=suite.build_model().to(dtype), suite=suite,
                        backend=REGISTRY.backend("cpu").spec.factory())


def _median_seconds(fn: Callable[[], Any], rounds: int = 10) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _conv_roof() -> dict[str, float]:
    """GFLOP/s of a 64-to-64 3x3 convolution (padding 1) of 160 maps of 14x14, per layout."""
    x, w = torch.randn(160, 64, 14, 14), torch.randn(64, 64, 3, 3)
    flops = 2 * 160 * 64 * 64 * 9 * 14 * 14
    roof = {}
    for layout, fmt in (("default", torch.contiguous_format), ("channels_last", torch.channels_last)):
        xf, wf = x.contiguous(memory_format=fmt), w.contiguous(memory_format=fmt)
        roof[f"conv_roof_gflops_{layout}"] = flops / _median_seconds(lambda xf=xf, wf=wf: F.conv2d(xf, wf, padding=1)) / 1e9
    return roof


def _conv_share(step: Callable[[], Any], rounds: int = 3) -> float:
    """The fraction of the operators' own (self) CPU time that convolution kernels take in `step`."""
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(rounds):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if e.key in CONV_KERNELS)
    return conv / total


def _deviation(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    return max(float((grads[k].double() - reference[k]).abs().max()) for k in reference)


@pytest.mark.parametrize("name", list(ALGORITHMS))
@pytest.mark.parametrize("threads", THREADS, indirect=True)
def test_meta_iteration(benchmark, episodes: tuple[OmniglotSuite, TaskBatch], threads: int, name: str) -> None:
    if REGISTRY.algorithm(name).available is False:
        pytest.skip(REGISTRY.algorithm(name).reason)
    suite, batch = episodes
    algo = _build(name, suite)
    benchmark.group = f"second-order MAML meta-iteration, conv4 Omniglot 5w1s 5q, {TASKS} tasks, {threads} thread(s)"
    benchmark.extra_info.update({"algorithm": name, "threads": threads, **ALGORITHMS[name]})
    benchmark.pedantic(algo.meta_train_step, args=(batch,), rounds=8, warmup_rounds=1)


@pytest.mark.parametrize("threads", THREADS, indirect=True)
def test_side_by_side(benchmark, episodes: tuple[OmniglotSuite, TaskBatch], threads: int) -> None:
    suite, batch = episodes
    algos = {name: _build(name, suite) for name in ALGORITHMS}
    with FlopCounterMode(display=False) as counter:
        algos["maml"].meta_gradient(batch)
    flops = counter.get_total_flops()
    info: dict[str, Any] = {"threads": threads, "tasks": TASKS, "rounds_each": ROUNDS, "flops_per_iteration": flops,
                            **_conv_roof()}

    # Float32 against float64, on the same batch and initialisation.
    batch64 = TaskBatch(batch.support_x.double(), batch.support_y, batch.query_x.double(), batch.query_y)
    plain = _build("maml", suite, torch.float64)
    plain.fast_forward = None  # the functional_call path the fast one must equal
    _, reference = plain.meta_gradient(batch64)
    _, fast64 = _build("maml", suite, torch.float64).meta_gradient(batch64)
    plain32 = _build("maml", suite)
    plain32.fast_forward = None
    info["max_abs_grad"] = max(float(g.abs().max()) for g in reference.values())
    info["native_fast_float64_vs_plain_float64"] = _deviation(fast64, reference)
    info["native_fast_float32_vs_float64"] = _deviation(algos["maml"].meta_gradient(batch)[1], reference)
    info["native_plain_float32_vs_float64"] = _deviation(plain32.meta_gradient(batch)[1], reference)
    info["l2l_float32_vs_float64"] = _deviation(algos["l2l-maml"].meta_gradient(batch)[1], reference)

    # The native plain path (what the fast one replaced as the default), timed in the same rounds.
    algos["maml-plain"] = plain32
    times: dict[str, list[float]] = {name: [] for name in algos}

    def both() -> None:
        for name, algo in algos.items():
            start = time.perf_counter()
            algo.meta_train_step(batch)
            times[name].append(time.perf_counter() - start)

    benchmark.group = f"native and l2l-maml alternated, {threads} thread(s)"
    benchmark.pedantic(both, rounds=ROUNDS, warmup_rounds=1)
    for name, series in times.items():
        median = statistics.median(series[1:])  # the warm-up round's times are left out
        info[f"{name}_median_s"] = median
        info[f"{name}_gflops"] = flops / median / 1e9
    info["native_over_l2l"] = info["maml_median_s"] / info["l2l-maml_median_s"]
    for name in ("maml", "l2l-maml"):
        share = _conv_share(lambda algo=algos[name]: algo.meta_train_step(batch))
        info[f"{name}_conv_share"] = share
        info[f"{name}_conv_s"] = share * info[f"{name}_median_s"]
    info["native_conv_floor_over_l2l"] = info["maml_conv_s"] / info["l2l-maml_median_s"]
    info["native_plain_over_l2l"] = info["maml-plain_median_s"] / info["l2l-maml_median_s"]
    benchmark.extra_info.update(info)
