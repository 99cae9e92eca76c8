# Set-up and the two everyday jobs. `make run` and `make test` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# The torch release the harness is tested with; override e.g. `make TORCH=torch==2.14.1 run`.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-all smoke bench learn2learn clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/harness run

smoke: $(STAMP)
	$(BIN)/harness run --grid smoke

# The everyday suite: everything but the tests marked slow (which build learn2learn, minutes and GBs).
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest

# learn2learn 0.2.0 built from its sdist (scripts/install_learn2learn.py); it needs torchvision, which
# on PyPI pairs with a CUDA build of torch (several GB), hence a target of its own.
L2L_TORCH ?= torch==2.14.1 torchvision==0.29.1
learn2learn: $(STAMP)
	$(BIN)/python -m pip install --quiet $(L2L_TORCH)
	$(BIN)/python scripts/install_learn2learn.py

# Speed benchmarks (pytest-benchmark); the JSON is committed as the reference for this machine kind.
bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks --benchmark-enable --benchmark-only \
		--benchmark-json=benchmarks/results/sinusoid-cpu.json --benchmark-columns=min,median,iqr,rounds

clean:
	rm -rf $(VENV) build *.egg-info
