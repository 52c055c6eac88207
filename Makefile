# sar-lightning launch surface: `make help` lists the targets; each calls one Python entry point.
VENV ?= .venv
PY := $(VENV)/bin/python
# The environment is rebuilt when pyproject.toml or the checkout folder changes (editable install).
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-10)-$(shell echo $(CURDIR) | sha1sum | cut -c1-6)

PROFILE ?= default
JOBS ?= $(shell nproc)
ROOT ?= runs
# SEEDS=0,1,2 replicates every run of a grid per training seed; sweep-all and sweep-anneal use ALL_SEEDS.
SEEDS ?=
ALL_SEEDS ?= 0,1,2
# EXTRA_EVALS=1 adds a grid's extra_evals: (settings too dear for the main job); sweep-all sets it.
EXTRA_EVALS ?=
# A sweep: `$(SWEEP) <grid file> $(SWEEP_KEYS) $(ARGS)` (the grid first, then key=value; ARGS="sweep.only=raster,random").
SWEEP = $(PY) -m sar_lightning sweep
SWEEP_KEYS = sweep.profile=$(PROFILE) sweep.jobs=$(JOBS) root=$(ROOT) $(if $(DATA),sweep.data=$(DATA)) \
	$(if $(SEEDS),sweep.seeds=$(SEEDS)) $(if $(EXTRA_EVALS),sweep.extra_evals=true)
PLOT = $(PY) analysis/plot_tradeoffs.py --root $(ROOT)
# DATA=fashion_mnist moves a sweep onto Fashion-MNIST VQ codes (experiments/grids/data/), extracted first.
FASHION_VQ := data/tokenizers/fashion_mnist_vq7
FASHION_CODES := data/fashion_mnist_vq7
DATA_PREP := $(if $(filter fashion_mnist,$(DATA)),tokenize-fashion)

.PHONY: help install fashion-data test test-fast lint bench bench-train gpu-check train evaluate sample sweep-orders sweep-intervals sweep-mar \
	sweep-spectrum sweep-anneal sweep-all report plots tb vq-fashion tokenize-fashion

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP) ## create the virtual environment ($(VENV)) and install the package with its dev extra

# Tests run in parallel worker processes (pytest-xdist), one per core.
TEST_JOBS ?= $(shell nproc)

# Fashion-MNIST for its tests and grids: Debian's package puts the idx files in /usr/share/datasets/fashion-mnist.
FASHION_IDX := /usr/share/datasets/fashion-mnist
fashion-data: ## Fashion-MNIST's idx files (Debian's dataset-fashion-mnist), installed when missing
	@test -d $(FASHION_IDX) || { command -v apt-get >/dev/null && \
		{ apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }; }; } \
		|| echo "make fashion-data: could not install dataset-fashion-mnist (apt-get, as root); the Fashion-MNIST tests will fail" >&2

test-fast: install ## the tests without the slow ones
	$(PY) -m pytest -q -m "not slow" -n $(TEST_JOBS)

test: install fashion-data lint ## the whole test suite (slow tests included, one worker per core), after ruff and the import contracts
	$(PY) -m pytest -q -n $(TEST_JOBS) --durations=15

lint: install ## ruff on the code, and the import contracts of pyproject.toml (lint-imports)
	$(VENV)/bin/ruff check sar_lightning tests analysis
	$(VENV)/bin/lint-imports

bench: install ## sampling speed: KV cache vs recomputation vs one teacher-forced forward
	$(PY) -m sar_lightning bench $(ARGS)

bench-train: install ## training throughput (tokens/s) across the spectrum and the GPT baseline
	$(PY) -m sar_lightning bench train=true $(ARGS)

gpu-check: install ## CUDA only, < 5 min: training tokens/s, cached == uncached, sampling s/image, DDP (ARGS="steps=30")
	$(PY) -m sar_lightning gpu-check $(ARGS)

train: install ## one run: make train CONFIG=experiments/smoke.yaml ARGS="train.max_steps=100"
	$(PY) -m sar_lightning train $(or $(CONFIG),experiments/smoke.yaml) root=$(ROOT) $(ARGS)

evaluate: install ## evaluate one run: make evaluate RUN=runs/<run_id> ARGS="infer.num_steps=[1,4]"
	$(PY) -m sar_lightning evaluate $(RUN) $(ARGS)

sample: install ## sample one run into a PNG grid: make sample RUN=runs/<run_id> ARGS="infer.num_steps=4 sample.progress=true"
	$(PY) -m sar_lightning sample $(RUN) $(ARGS)

sweep-orders: install $(DATA_PREP) ## the main job: every order at K = N, FD vs steps + train x inference order matrix (DATA=fashion_mnist: on VQ codes)
	$(SWEEP) experiments/grids/orders.yaml $(SWEEP_KEYS) $(ARGS) && $(PLOT) --grid orders

sweep-intervals: install $(DATA_PREP) ## random order with different training interval schedules and K
	$(SWEEP) experiments/grids/intervals.yaml $(SWEEP_KEYS) $(ARGS) && $(PLOT) --grid intervals

sweep-mar: install $(DATA_PREP) ## the MAR end: split sampler, first-set loss, causal vs full decoder attention
	$(SWEEP) experiments/grids/mar.yaml $(SWEEP_KEYS) $(ARGS) && $(PLOT) --grid mar

sweep-spectrum: install $(DATA_PREP) ## AR, SAR-TS, MAR, VAR-like and the GPT baseline, KV cache on and off
	$(SWEEP) experiments/grids/spectrum.yaml $(SWEEP_KEYS) $(ARGS) && $(PLOT) --grid spectrum

vq-fashion: install fashion-data ## train the Fashion-MNIST VQ-VAE (28x28 -> 7x7 codes, 256 entries) into data/tokenizers/fashion_mnist_vq7
	$(PY) -m sar_lightning train-vq data=fashion_mnist out=$(FASHION_VQ) grid=7 codebook_size=256 max_steps=1000 threads=$(JOBS)

tokenize-fashion: vq-fashion ## Fashion-MNIST as 7x7 VQ codes in data/fashion_mnist_vq7 (skipped when up to date)
	$(PY) -m sar_lightning tokenize data=fashion_mnist tokenizer=vqvae:$(FASHION_VQ)/vqvae.pt out=$(FASHION_CODES) threads=$(JOBS)

sweep-anneal: install ## RAR's order annealing against raster and random, sampled in both orders (ALL_SEEDS seeds)
	$(SWEEP) experiments/grids/anneal.yaml $(SWEEP_KEYS) $(if $(SEEDS),,sweep.seeds=$(ALL_SEEDS)) $(ARGS) && $(PLOT) --grid anneal

sweep-all: install ## every grid (orders, intervals, mar, spectrum, anneal) with ALL_SEEDS training seeds, the plots, the report
	$(MAKE) sweep-orders sweep-intervals sweep-mar sweep-spectrum sweep-anneal SEEDS=$(or $(SEEDS),$(ALL_SEEDS)) EXTRA_EVALS=1
	$(PLOT)
	$(MAKE) report

plots: install ## redraw the figures from the results table (all runs under ROOT)
	$(PY) analysis/plot_tradeoffs.py --root $(ROOT) $(if $(GRID),--grid $(GRID))

tb: install ## TensorBoard on http://127.0.0.1:6006 over every run
	$(PY) -m tensorboard.main --logdir $(ROOT) --host 127.0.0.1 --port 6006

GRIDS := orders intervals mar spectrum anneal

# The committed results archive: every evaluated run's config and results, and the sweep manifests (no checkpoints).
ARCHIVE ?= docs/results/runs

report: install ## ROOT's results merged into the archive (docs/results/runs), then every grid's figures and FINDINGS.md from it
	@if [ -d $(ROOT) ]; then $(PY) -m sar_lightning archive root=$(ROOT) into=$(ARCHIVE); fi
	@for g in $(GRIDS); do $(PY) analysis/plot_tradeoffs.py --root $(ARCHIVE) --grid $$g --out docs/results \
		|| echo "[report] no figures for grid $$g yet"; done
	$(PY) analysis/report.py --root $(ARCHIVE) --readme README.md
