# Two commands on a fresh machine: `make run` and `make test`. Both set up .venv first.
VENV    ?= .venv
PYTHON  ?= python3
# Installed with --no-deps: facenet-pytorch's declared pins (torch<2.3, numpy<2, Pillow<10.3) clash
# with ours, yet it works with them. Part of the stamp, so that changing it reinstalls.
NODEPS  := facenet-pytorch==2.6.0
# Bytecode is compiled at install (uv compiles only what it installs): uv does not by default,
# and where PYTHONDONTWRITEBYTECODE is set, as on these machines, every process compiled torch,
# MLflow and DVC from source again, twice the CPU of each import. An older .venv: rm -rf .venv.
COMPILE := --compile-bytecode
STAMP   := $(VENV)/.installed-$(shell { cat requirements.txt pyproject.toml; echo '$(NODEPS)'; } | cksum | cut -d' ' -f1)
PORT    ?= 5000
UV_VERSION := 0.13.9

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

# Stages call `python`, `dvc` calls nothing else: put the venv first on PATH for every recipe.
export PATH := $(abspath $(VENV))/bin:$(PATH)
# No network at run time here: keep DVC and MLflow from phoning home.
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.PHONY: setup browser run lint test test-fast ui compare exps plots generalisation bench bench-prepare efficiency rehearsal gpu-check gpu-wheels clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@# uv downloads and installs in parallel: about 1.5 min cold here, against pip's 2.7 min (5 GB of CUDA wheels).
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION) 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(VENV)/bin/uv pip install -q --python $(VENV)/bin/python $(COMPILE) -r requirements.txt
	$(VENV)/bin/uv pip install -q --python $(VENV)/bin/python $(COMPILE) --no-deps $(NODEPS)
	$(VENV)/bin/uv pip install -q --python $(VENV)/bin/python $(COMPILE) --no-deps -e .
	$(VENV)/bin/python -c "import torch, torchvision, timm, mlflow, dvc, sklearn, skimage, playwright, pytorch_grad_cam, facenet_pytorch, av"
	@rm -f $(VENV)/.installed-* && touch $@

run: setup
	dvc repro
	@echo; echo "val metrics (metrics.json):"; $(VENV)/bin/python -c "import json; m = json.load(open('metrics.json'))['val']; print('  ' + '  '.join(f'{k} {v:.4f}' for k, v in m.items()))"
	@echo "submission: $$(grep -c . submission.csv) lines in submission.csv (with header)"
	@echo "browse runs: make ui  ->  http://127.0.0.1:$(PORT)"

# The MLflow UI test drives Debian's chromium. Installing it needs apt-get and root;
# where that fails the test says why and skips.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium with apt-get (for the MLflow UI test)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
	  || echo "note: could not install chromium; the browser test will be skipped"; }

# In seconds, before the tests: the layer contract of ffdi/ (pyproject.toml's [tool.importlinter]) and
# ruff's lint rules ([tool.ruff]). `$(VENV)/bin/ruff format` formats.
lint: setup
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check

test: setup browser lint
	$(VENV)/bin/python -m pytest -m "not smoke"

# The inner loop: the unit tests and one tiny pipeline (tests/test_smoke.py), about a minute on 2 cores.
test-fast: setup lint
	$(VENV)/bin/python -m pytest -m "not slow" --durations=5

ui: setup
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port $(PORT)

compare: setup
	ffdi compare $(ARGS)

# The experiments in one screen: the headline metrics and the params that differ, best val AUC first.
# dvc exp show alone has a column for each of metrics.json's headline numbers (15 here), each param and
# each dep (over 100).
EXPS_DROP := ^(Created|val_no_tta|extra_sets|ensemble|group_mean_auc|group_worst_auc|degraded_worst_auc|images|precision)(\.|$$)|^val\.(average_precision|eer|tpr_at_fpr_.*)$$|.*/|^prepared$$
EXPS_KEEP := ^(Experiment|val\.(roc_auc|accuracy|tpr_at_fpr)|degraded_mean_auc|heldout\.roc_auc)$$
exps: setup
	dvc exp show --no-pager --only-changed --drop '$(EXPS_DROP)' --keep '$(EXPS_KEEP)' --sort-by val.roc_auc \
	  --sort-order desc $(ARGS)

# Every plot, offline: `dvc plots show` draws its Vega charts with Vega loaded from a CDN, blank without
# internet. Each has a PNG twin among dvc.yaml's image plots (history.png: loss and val AUC per epoch; roc,
# confusion, groups, robustness), and this page shows those alone, with no script: dvc_plots/offline/.
PNG_PLOTS = $(shell sed -n 's|^- \(reports/.*\.png\)$$|dvc.yaml::\1|p' dvc.yaml)
plots: setup
	dvc plots show $(PNG_PLOTS) --out dvc_plots/offline

# Leave one manipulation out (and train on one): queues and runs the DVC experiments, then the tables.
# e.g. make generalisation ARGS="-S model.se=true --seeds 0 1 2"; ARGS=--no-run renders existing runs only.
generalisation: setup
	ffdi generalisation $(ARGS)

bench: setup
	python -m benchmarks.train_speed $(ARGS)

# Does the training loop run at the speed of its slowest part? Loader alone, model alone, fit (about 9 min).
efficiency: setup
	python -m benchmarks.efficiency $(ARGS)

# Every stage and bookkeeping step at 10k and 100k images (about 30 min); ARGS="--sizes --dvc-sizes 670000"
# for the DVC steps at multiFFDI's size.
rehearsal: setup
	python -m benchmarks.rehearsal $(ARGS)

bench-prepare: setup
	python -m benchmarks.studies.prepare_scale

# Five minutes on a lent GPU machine: loader, training step, fit, syncs per step, scoring
# (benchmarks/gpu_check.py; where there is no GPU, a tiny rehearsal on the CPU in under a minute).
gpu-check: setup
	python -m benchmarks.gpu_check $(ARGS)

# The GPU machines have Python 3.12 and torch but no pydantic, which ffdi.config needs, and no network:
# its wheels, at the versions this venv resolved from requirements.txt, into .whl/ to carry there.
# The command to run there is in benchmarks/gpu_check.py's docstring.
GPU_WHEELS := pydantic pydantic-core annotated-types typing-inspection typing-extensions
gpu-wheels: setup
	rm -rf .whl
	python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl \
	  $$(python3 -c "import importlib.metadata as m; print(*(f'{p}=={m.version(p)}' for p in '$(GPU_WHEELS)'.split()))") \
	  2>&1 | { grep -v "^WARNING: Location" || true; }
	@ls .whl

clean:
	rm -rf data/sample data/listing.json prepared models reports/mlflow_run.json reports/history.csv reports/evaluate metrics.json submission.csv .ffdi
