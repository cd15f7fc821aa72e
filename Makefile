# fif: one command sets up and runs the main job, one runs the tests (see README.md).
# torch and torchvision are pinned and installed first (see constraints.txt for every other pin).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fif-installed

.PHONY: setup run test test-all bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,peft,tensorboard]"
	touch $(STAMP)

# The main job: a full continual pretraining run on the built-in mini benchmark.
run: setup
	$(VENV)/bin/fif run --preset mini

# The test suite (CPU, no network). Slow tests: make test-all.
test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m "slow or not slow"

clean:
	rm -rf $(VENV) .pytest_cache
