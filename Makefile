# Two commands do all set-up: `make demo` and `make test` create or reuse .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export OMP_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv test test-slow test-gpu demo compare probe bench bench-real-shapes notebooks clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first (a local file here); an unpinned torch would
	# pull several GB of CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# On a CUDA machine: every family in bf16 on the GPU against plain hooks, a fit on the default.
test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu tests/test_gpu.py

demo: $(STAMP)
	$(PY) -m experiments.cli demo

compare: $(STAMP)
	$(PY) -m experiments.cli compare

probe: $(STAMP)
	$(PY) -m experiments.cli probe

# Each script prints ratios measured in one run; see the README's performance section.
bench: $(STAMP)
	$(PY) bench/tracing_overhead.py
	$(PY) bench/steering_overhead.py
	$(PY) bench/capture_throughput.py
	$(PY) bench/eraser_size.py
	$(PY) bench/fit_vs_baselines.py
	$(PY) bench/train_step.py

# 7B-shaped slices (random weights, bf16): costs per sample and layer, projected to the full models
# (about 25 minutes on 2 CPU cores, 12 GiB of memory), then the width-scaling plot (docs/scaling.png).
bench-real-shapes: $(STAMP)
	$(PY) bench/real_shapes.py
	$(PY) bench/scaling.py

notebooks: $(STAMP)
	$(PY) -m pip install -q -e '.[notebooks]'
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf $(VENV) results .pytest_cache
