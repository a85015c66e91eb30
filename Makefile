# CloSe for Blender — developer and CI entry points.
#   make demo       set up (once), then run the main job on the bundled defaults
#   make test       the full test suite (ruff + pytest, real Blender via the bpy module)
#   make setup      .venv with the pinned packages, the project installed, Anny's cache built
#   make extension  dist/close_blender-<version>.zip, checked by Blender's extension tool
#   make train-default  regenerate the training scans and retrain inference/models/default
#                       (the staged recipe, ~6 h, resumable; DRY_RUN=1 checks it in minutes)

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
# The oldest Blender the manifest claims (blender_version_min), for the compatibility tests.
OLDEST := .venv-blender42
OLDEST_PINS := bpy==4.2.0 numpy==1.26.4

.PHONY: setup demo test lint extension train-default clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e ".[worker,test]"
	$(VPY) tools/warm_caches.py
	test -x $(OLDEST)/bin/python || $(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install --quiet $(OLDEST_PINS)
	$(VPY) -m close_blender synth data/samples --count 4 --seed 0 --preview
	touch $(STAMP)

demo: setup
	$(VPY) tools/demo.py

lint: setup
	$(VPY) -m ruff check .

test: setup lint
	$(VPY) -m pytest

extension: setup
	$(VPY) tools/build_extension.py dist

# Retrain the bundled model from generated scans (~6 h on a CPU; rerun to resume).
train-default: setup
	bash tools/train_default.sh

clean:
	rm -rf dist out .pytest_cache .ruff_cache
