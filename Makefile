# Two commands do all set-up: `make demo` and `make test` create or reuse .venv (commands then in .venv/bin).
# The CPU torch pin and the offline variables below apply to the .venv targets only; to use the package in
# your own (CUDA) environment, `pip install -e .` there (docs/install.md) and `make test-gpu`.
PYTHON ?= python3
PYTHON_GPU ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Never more threads than the user asked for; 2 is this project's CI machine.
export OMP_NUM_THREADS ?= 2
OFFLINE := TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

.PHONY: venv test test-slow test-gpu demo compare probe bench bench-real-shapes docs notebooks clean

# Where the CPU build of torch comes from. Empty: pip's own configuration (this project's machines serve
# torch 2.13.0 from a local file). On any other Linux box, point it at PyTorch's CPU wheel index, or pip takes
# the CUDA build (several GB):  make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
# The versions the suite is tested with (CI installs exactly these).
CONSTRAINTS := constraints.txt

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first; an unpinned torch would pull several GB of CUDA packages.
	$(PY) -m pip install -q -c $(CONSTRAINTS) torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[dev,docs]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(OFFLINE) $(PY) -m pytest -q

test-slow: $(STAMP)
	$(OFFLINE) $(PY) -m pytest -q -m slow

# On a CUDA machine, with your own interpreter (where `pip install -e '.[dev]'` put this package beside your
# CUDA torch): every family in bf16 on the GPU against plain hooks, a fit on the default. Hub access as you set it.
test-gpu:
	$(PYTHON_GPU) -m pytest -q -m gpu tests/test_gpu.py

demo: $(STAMP)
	$(OFFLINE) $(PY) -m experiments.cli demo

compare: $(STAMP)
	$(OFFLINE) $(PY) -m experiments.cli compare

probe: $(STAMP)
	$(OFFLINE) $(PY) -m experiments.cli probe

# The documentation site (Sphinx + MyST + furo), warnings as errors, into docs/_build/html. The tutorials are
# executed, so their pages show what each cell prints and plots (about 12 minutes on 2 cores the first time; the
# cache in docs/_build/.jupyter_cache re-runs a notebook only when it or the library changed, docs/conf.py).
docs: $(STAMP)
	$(OFFLINE) MLLMERASER_DOCS_EXECUTE=cache $(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html

# Each script prints ratios measured in one run; see docs/results.md, "Performance".
bench: $(STAMP)
	$(OFFLINE) $(PY) bench/tracing_overhead.py
	$(OFFLINE) $(PY) bench/steering_overhead.py
	$(OFFLINE) $(PY) bench/capture_throughput.py
	$(OFFLINE) $(PY) bench/eraser_size.py
	$(OFFLINE) $(PY) bench/fit_vs_baselines.py
	$(OFFLINE) $(PY) bench/choice_cost.py
	$(OFFLINE) $(PY) bench/train_step.py

# 7B-shaped slices (random weights, bf16): costs per sample and layer, projected to the full models
# (about 25 minutes on 2 CPU cores, 12 GiB of memory), then the width-scaling plot (docs/scaling.png).
bench-real-shapes: $(STAMP)
	$(OFFLINE) $(PY) bench/real_shapes.py
	$(OFFLINE) $(PY) bench/scaling.py

notebooks: $(STAMP)
	$(PY) -m pip install -q -e '.[notebooks]'
	$(OFFLINE) $(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf $(VENV) results .pytest_cache docs/_build docs/tutorials
