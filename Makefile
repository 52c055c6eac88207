# sar-lightning launch surface: `make help` lists the targets; each calls one Python entry point.
VENV ?= .venv
PY := $(VENV)/bin/python
# The environment is rebuilt when pyproject.toml or the checkout folder changes (editable install).
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-10)-$(shell echo $(CURDIR) | sha1sum | cut -c1-6)

.PHONY: help install test lint bench

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP) ## create the virtual environment ($(VENV)) and install the package with its dev extra

test: install ## run the whole test suite (slow tests included) and ruff
	$(VENV)/bin/ruff check sar_lightning tests analysis
	$(PY) -m pytest -q

lint: install ## ruff on the code
	$(VENV)/bin/ruff check sar_lightning tests analysis

bench: install ## sampling speed: KV cache vs recomputation vs one teacher-forced forward
	$(PY) -m sar_lightning.bench
