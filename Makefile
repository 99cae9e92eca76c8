# Set-up and the two everyday jobs. `make run` and `make test` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# The torch release the harness is tested with, and the torchvision built for it (learn2learn imports
# torchvision; PyPI's Linux torchvision only loads beside PyPI's own torch build of the same release).
TORCH ?= torch==2.14.1 torchvision==0.29.1
# torchmeta's last release (1.8.0) pins torch < 1.10 and torchvision < 0.11: set-up installs it with
# --no-deps, and the `peers` extra brings what it needs at run time (plugins/algorithms/torchmeta_maml.py).
TORCHMETA ?= torchmeta==1.8.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-all smoke bench report learn2learn clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[test,learn2learn,peers,ray,export]"
	$(BIN)/python scripts/install_learn2learn.py
	$(BIN)/python -m pip install --quiet --no-deps $(TORCHMETA)
	# The HTML report's browser test drives the system's chromium; without it that one test skips.
	PYTHON=$(BIN)/python scripts/install_chromium.sh || echo "chromium not installed: the report's browser test will skip"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/harness run

smoke: $(STAMP)
	$(BIN)/harness run --grid smoke

# The everyday suite: everything but the tests marked slow (long trainings, a from-scratch learn2learn build).
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest

# The HTML report of the published grids (report/index.html; works offline, from file://).
report: $(STAMP)
	$(BIN)/harness report --grid sinusoid-paper --grid omniglot-small --grid omniglot-runs --grid mapping --grid memory-steps

# Rebuild learn2learn 0.2.0 from its sdist (set-up already does this once; see scripts/install_learn2learn.py).
learn2learn: $(STAMP)
	$(BIN)/python scripts/install_learn2learn.py --force

# Speed benchmarks (pytest-benchmark); the JSON files are committed as the reference for this machine kind.
bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks/test_bench_sinusoid.py --benchmark-enable --benchmark-only \
		--benchmark-json=benchmarks/results/sinusoid-cpu.json --benchmark-columns=min,median,iqr,rounds
	$(BIN)/python -m pytest benchmarks/test_bench_sampling.py --benchmark-enable --benchmark-only \
		--benchmark-min-rounds=50 --benchmark-max-time=5 --benchmark-warmup=on \
		--benchmark-json=benchmarks/results/sampling-cpu.json --benchmark-columns=min,median,iqr,rounds
	$(BIN)/python -m pytest benchmarks/test_bench_overhead.py --benchmark-enable --benchmark-only \
		--benchmark-json=benchmarks/results/overhead-cpu.json --benchmark-columns=min,median,iqr,rounds
	$(BIN)/python -m pytest benchmarks/test_bench_maml.py --benchmark-enable --benchmark-only \
		--benchmark-json=benchmarks/results/maml-cpu.json --benchmark-columns=min,median,iqr,rounds
	$(BIN)/python -m pytest benchmarks/test_bench_executors.py --benchmark-enable --benchmark-only \
		--benchmark-json=benchmarks/results/executors-cpu.json

clean:
	rm -rf $(VENV) build *.egg-info
