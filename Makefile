# Two commands on a fresh machine:
#   make reproduce   set up, restore or rebuild data/, run the whole `dvc repro`
#   make test        set up, run the test suite
#   make verify      after make reproduce: compare the regenerated results with the committed ones
# Python 3.11+ with pip and venv is all they need.

PYTHON ?= python3
VENV ?= .venv
# Installed before the project so pip never pulls the multi-GB CUDA build on a CPU machine.
# Override for a GPU machine, e.g. make setup TORCH_SPEC="torch==2.13.0 --index-url ..."
TORCH_VERSION ?= 2.13.0
TORCH_SPEC ?= torch==$(TORCH_VERSION)
# Every other package at the exact version and hash of the lock file (`make lock` regenerates it
# from pyproject.toml). LOCK= installs from pyproject.toml's ranges instead (newest releases).
LOCK ?= requirements.lock
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.rgvlm-installed

# Keep every tool's cache inside the project (CI machines, read-only homes).
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1
export DVC_SITE_CACHE_DIR := $(abspath .cache/dvc-site)
export MPLCONFIGDIR := $(abspath .cache/matplotlib)
export IPYTHONDIR := $(abspath .cache/ipython)
export JUPYTER_CONFIG_DIR := $(abspath .cache/jupyter-config)
export JUPYTER_DATA_DIR := $(abspath .cache/jupyter-data)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYGAME_HIDE_SUPPORT_PROMPT := 1
# Which lock the venv was made from (tests/test_lock.py checks the venv against it; empty: none).
export RGVLM_LOCK := $(LOCK)

.PHONY: setup lock data restore-data reproduce verify readme test test-fast check-deps lint lab notebooks clean-outputs export-minari sweep noise-sweep device-wheels profile
space := $(subst ,, )

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCK) rgvlm/peer/d3rlpy_baseline.py
	mkdir -p .cache
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
ifneq ($(strip $(LOCK)),)
	# torch is left out of the lock (installed just above, CPU or CUDA build as TORCH_SPEC says);
	# pip's hash-checking mode accepts it because it is already installed.
	$(BIN)/python -m pip install -q --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps -e .
else
	$(BIN)/python -m pip install -q -e ".[test]"
endif
	$(BIN)/python -m rgvlm.peer install
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (rgvlm)" >/dev/null
	touch $@

# Regenerate requirements.lock from pyproject.toml (the project's and the test extra's requirements,
# newest releases the index offers that satisfy them), with the hashes of every file of each pinned
# version. torch stays out (TORCH_SPEC installs it); its version constrains the resolution. pip-tools
# runs from its own venv so that it never enters the project's. Takes minutes (hashes of every wheel).
LOCK_VENV := .cache/lock-venv
lock:
	mkdir -p .cache
	test -x $(LOCK_VENV)/bin/pip-compile || { $(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/python -m pip install -q "pip-tools>=7.4"; }
	echo "torch==$(TORCH_VERSION)" > .cache/torch-constraint.txt
	$(LOCK_VENV)/bin/pip-compile -q --generate-hashes --extra test --strip-extras --unsafe-package torch \
		--no-emit-index-url --no-emit-find-links --constraint .cache/torch-constraint.txt \
		--output-file requirements.lock pyproject.toml

# Rebuild data/ from params.yaml and record it in data.dvc (after changing env/dataset params).
data: setup
	$(BIN)/python -m rgvlm.data collect
	$(BIN)/dvc commit -f data.dvc

# data/ as data.dvc records it: pulled from the DVC remote if one is configured, else rebuilt
# byte for byte by the generator, then checked against data.dvc.
restore-data: setup
	@if $(BIN)/dvc status data.dvc 2>/dev/null | grep -q "up to date"; then \
		echo "data/ is up to date with data.dvc"; \
	elif [ -n "$$($(BIN)/dvc remote list)" ] && $(BIN)/dvc pull data.dvc; then \
		echo "data/ pulled from the DVC remote"; \
	else \
		echo "no DVC remote with the data: rebuilding data/ from params.yaml"; \
		$(BIN)/python -m rgvlm.data collect && \
		$(BIN)/dvc commit -f data.dvc >/dev/null && \
		git diff --quiet -- data.dvc || { echo "data/ rebuilt but differs from data.dvc: were env/dataset params changed? run 'make data'"; exit 1; }; \
	fi

# The README's headline block is generated from the report's metrics (rgvlm/readme.py): refreshed here.
# With a DVC remote configured, what it holds is pulled first, so that `dvc repro` recomputes only the
# stages whose outputs it lacks (--allow-missing: a remote with only part of the cache, e.g. data/ and
# the labels, is fine); a failed pull is said and the stages are recomputed. No remote: `dvc repro` alone.
reproduce: restore-data
	@if [ -n "$$($(BIN)/dvc remote list)" ]; then \
		$(BIN)/dvc pull --allow-missing && echo "pulled what the DVC remote has; dvc repro runs what is left" || \
		echo "dvc pull failed (above): every stage whose outputs are missing or stale is recomputed"; \
	fi
	$(BIN)/dvc repro
	$(BIN)/python -m rgvlm.readme

# data/ as a Minari dataset (rgvlm/ordered/sparse-v0 in $MINARI_DATASETS_PATH, else ~/.minari/datasets);
# EXPORT_ARGS="--rewards rg_vlm" puts a reward set of outputs/rewards/ in place of the sparse reward.
EXPORT_ARGS ?=
export-minari: restore-data
	$(BIN)/python -m rgvlm.data export-minari $(EXPORT_ARGS)

# After `make reproduce`: compare the regenerated results with the committed ones (git HEAD, or
# VERIFY_ARGS="--ref REF"): exact outputs exactly, trained numbers against their 95% intervals;
# prints one table (VERIFY_ARGS="--output reports/verify.md" also writes it). Non-zero on disagreement.
VERIFY_ARGS ?=
verify: setup
	$(BIN)/python -m rgvlm.verify $(VERIFY_ARGS)

# README.md's headline block, rewritten from reports/metrics/evaluation.json (after a new run).
readme: setup
	$(BIN)/python -m rgvlm.readme

# One DVC experiment per value of one parameter, queued and run one after the other (each in a copy
# under .dvc/tmp/exps; the workspace is left as it is), then listed with the k = 1 columns of
# Figure 4 (reports/figure4.json) and the parameter: README "Sweeps". For exploring, on the
# evaluation seeds: settings are chosen on the validation split (experiments/learning.py).
#   make sweep PARAM=train.beta VALUES=3,10
PARAM ?= train.beta
VALUES ?= 3,10
SWEEP_COLUMNS ?= $(subst .,\.,$(PARAM))|.*\.k1\.completion_mean
sweep: setup
	$(BIN)/dvc exp run --queue -S '$(PARAM)=$(VALUES)'
	$(BIN)/dvc exp run --run-all
	$(BIN)/dvc exp show --no-pager --md --drop '.*' --keep 'Experiment|$(SWEEP_COLUMNS)'

# The noise sweep (docs/methods.md "The noise sweep"): how good must an LVLM's labels be before they
# help? Its stage lives in optional/dvc.yaml, outside the default `dvc repro` (about 4.5 h on 2 cores
# at the CPU profile's params.yaml noise_sweep section); then the report stage again, which reads the
# sweep's results from reports/tuning/ (no DVC dependency: one would pull the sweep into `dvc repro`).
noise-sweep: restore-data
	$(BIN)/dvc repro optional/dvc.yaml:noise_sweep
	$(BIN)/dvc repro --force --single-item report

# A profile (profiles/NAME.yaml: only what differs from params.yaml) written out merged as params.yaml,
# where DVC reads parameters; checked by every section's checker first (docs/configuration.md).
#   make profile PROFILE=gpu && make data && make reproduce      (git checkout params.yaml: back to CPU)
PROFILE ?= tiny
profile: setup
	$(BIN)/python -m rgvlm.profiles $(PROFILE) --out params.yaml

# For a GPU lease (benchmarks/gpu_session.sh): the packages the device image lacks, as wheels for its
# Python 3.12 in .whl/ (git-ignored; carry it: run(command="bash benchmarks/gpu_session.sh", carry=[".whl"])).
# Versions: the ones this venv runs.
DEVICE_PACKAGES := minigrid gymnasium farama-notifications pygame-ce
device-wheels: setup
	rm -rf .whl && mkdir -p .whl
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
		$$($(BIN)/python -m pip list --format=freeze | grep -i -E '^($(subst $(space),|,$(DEVICE_PACKAGES)))==')
	ls -la .whl

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Everything but the tests marked slow (real pipeline, servers, process pools, over ~10 s each).
test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# Every stage's deps in dvc.yaml cover the rgvlm modules its notebook imports (also a test).
check-deps: setup
	$(BIN)/python -m tools.dvc_deps

lint: setup
	$(BIN)/ruff check rgvlm tests benchmarks experiments tools notebooks/*.py

# JupyterLab on the project, with the venv as its kernel (add --allow-root when running as root).
lab: setup
	$(BIN)/jupyter lab --notebook-dir=. $(LAB_ARGS)

# Regenerate the .ipynb from their paired jupytext .py files (the reviewable source).
notebooks: setup
	$(BIN)/jupytext --sync notebooks/*.py
