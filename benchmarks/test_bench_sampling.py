"""Episode sampling speed on real Omniglot: the suite's vectorised native sampler against learn2learn's
TaskDataset (plugins/fewshot/taskdataset.py) drawing from the same classes, 5-way 1-shot and 20-way 5-shot.

The results file benchmarks/results/sampling-cpu.json is committed; it was written by

    python -m pytest benchmarks/test_bench_sampling.py --benchmark-enable --benchmark-only \
        --benchmark-min-rounds=50 --benchmark-max-time=5 --benchmark-warmup=on \
        --benchmark-json=benchmarks/results/sampling-cpu.json

on a 2-core CPU shared with other jobs, so compare medians (at least 50 rounds each), not means. Measured
(medians, one thread): 5-way 1-shot 1.08 ms a call, 29,600 episodes/s, against learn2learn's 2,700
(11.0x); 20-way 5-shot 5.3 ms, 6,040 episodes/s, against 452 (13.4x). Before the shared class pool the
native sampler ran 5,170 and 1,090 episodes/s (3.4x and 3.5x): its time went to boolean-mask rotations,
a full argsort of the class keys, advanced indexing and converting uint8 to float32 at every call; now
turned classes are materialised once, `topk` picks the classes and images, `index_select` gathers, and a
pool of at most 256 MiB as float32 is converted once. Calls allocate their float32 output afresh, so
their time depends on page faults (glibc's dynamic mmap threshold): a minority of calls takes 2-3x the
median. These are measurements, not tests: nothing here asserts a time.

Each call draws a meta-batch of EPISODES training episodes (the small background sets' 150 training
characters in four rotations: 600 classes, as the papers augment them); episodes per second is EPISODES
/ the median time of a call, which each entry's extra_info records. Skipped when the Omniglot small sets
are not found ($HARNESS_DATA, else the shared data folder beside the repository).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("PIL", reason="the Omniglot suite decodes PNG with Pillow (pip install pillow)")
from metaharness_plugins.suites.omniglot import OmniglotConfig, OmniglotSuite, check_data  # noqa: E402

EPISODES = 32  # one meta-batch
SETTINGS = {"5w1s": (5, 1, 15), "20w5s": (20, 5, 15)}  # ways, shots, query (queries per class)
SAMPLERS = ("native", "learn2learn")
#: Where the test suite finds the data too (tests/conftest.py): the shared folder beside the repository.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def suites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, OmniglotSuite]:
    """One suite per setting, decoded once into a cache of this session (no downloads)."""
    data = os.environ.get("HARNESS_DATA") or str(SHARED_DATA)
    cache = tmp_path_factory.mktemp("omniglot-cache")
    configs = {name: OmniglotConfig(ways=ways, shots=shots, query=query, rotations=True, download="never",
                                     data_root=str(Path(data) / "omniglot"), cache_dir=str(cache))
               for name, (ways, shots, query) in SETTINGS.items()}
    reason = check_data(configs["5w1s"])
    if reason:
        pytest.skip(f"no Omniglot small background sets: {reason}")
    return {name: OmniglotSuite(config) for name, config in configs.items()}


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_episodes_per_second(benchmark, suites: dict[str, OmniglotSuite], setting: str, sampler: str) -> None:
    torch.set_num_threads(1)
    suite = suites[setting]
    ways, shots, query = SETTINGS[setting]
    if sampler == "native":
        sample = suite.sample
    else:
        pytest.importorskip("learn2learn", reason="learn2learn is not installed (make learn2learn)")
        from metaharness_plugins.fewshot.taskdataset import TaskDatasetSampler

        sample = TaskDatasetSampler(suite.pools, ways, shots, query).sample
    generator = torch.Generator().manual_seed(0)
    benchmark.group = f"{EPISODES} episodes, {ways}-way {shots}-shot {query}-query Omniglot, 1 thread"
    benchmark.extra_info.update({"sampler": sampler, "episodes_per_call": EPISODES, "ways": ways,
                                 "shots": shots, "query": query, "classes": len(suite.classes["train"][0])})
    batch = benchmark(sample, EPISODES, generator, "train")
    assert batch.query_x.shape == (EPISODES, ways * query, 1, 28, 28)  # the call did the work measured
    if benchmark.stats is not None:  # None under --benchmark-disable: the function then ran once, untimed
        benchmark.extra_info["episodes_per_second_median"] = EPISODES / benchmark.stats.stats.median
