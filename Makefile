# The two commands of the README: `make repro` (the main job) and `make test` (the tests).
# Each sets up what it needs first (virtualenv, editable install, Fashion-MNIST files); the
# set-up steps are idempotent, so a second run skips what is done.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DATA   := data/fashion-mnist
export HF_HUB_OFFLINE ?= 1
# dvc runs the stages' `papermill` from the virtualenv
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup data test repro check-profiles benchmark clean-runs

setup: $(STAMP)

# Reinstall only when the dependency pins change.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[pipeline,test]'
	touch $(STAMP)

# Fashion-MNIST: the Debian package when installable, else torchvision's download, else
# `make data SOURCE=/path/with/the/four/files`.
data: setup
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 \
	    && [ "$$(id -u)" = 0 ]; then \
	    echo "installing the Debian package dataset-fashion-mnist"; \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	    || echo "apt-get failed; falling back to torchvision's download"; \
	fi
	$(BIN)/python -m g2sd_lib.fmnist fetch --dest $(DATA) $(if $(SOURCE),--source $(SOURCE))

# The test files run on up to 4 cores at once (pytest-xdist, one file per worker: a file's fixtures are built once),
# each worker with its share of the CPU threads (tests/conftest.py). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))
test: data
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# `make repro` runs the default profile, `make repro P=gpu` another (g2sd_lib/pipeline/profiles/<P>.yaml; it is
# added to params.yaml's profiles). Results: reports/<P>/; each stage's time: runs/<P>/repro_times.json, which
# orders the next run's stages (longest chains first). `dvc repro` records whatever data/ holds in
# data.dvc; verify the bytes and the pin first.
P ?= fmnist
# A misspelt P stops here, before the data set-up: the profiles are the files g2sd_lib/pipeline/profiles/<P>.yaml
# but base.yaml (the values a profile does not state).
PROFILES := $(filter-out base,$(basename $(notdir $(wildcard g2sd_lib/pipeline/profiles/*.yaml))))
ifneq ($(filter repro,$(MAKECMDGOALS)),)
ifneq ($(words $(P)) $(filter $(P),$(PROFILES)),1 $(P))
$(error unknown profile '$(P)' (make repro P=...): choose one of $(PROFILES))
endif
endif
# params.yaml's profiles too, by the library (whose list is the same files), before the data set-up
check-profiles: setup
	$(BIN)/python -m g2sd_lib.pipeline.profiles check $(P)

repro: check-profiles data
	$(BIN)/python -m g2sd_lib.fmnist verify --dest $(DATA)
	$(BIN)/python -m g2sd_lib.pipeline.profiles enable $(P)
	$(BIN)/python -m g2sd_lib.pipeline.repro $(P) $(if $(JOBS),--jobs $(JOBS)) --json runs/$(P)/repro_times.json
	$(BIN)/python -m g2sd_lib.pipeline.compare

benchmark: setup
	$(BIN)/python benchmarks/throughput.py

clean-runs:
	rm -rf runs
