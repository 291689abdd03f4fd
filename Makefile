# Every target creates .venv on first use, so a fresh clone needs only Python >= 3.10 and make.
PYTHON3 ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install train sweep test test-fast lint format bench tensorboard clean

$(STAMP): pyproject.toml
	$(PYTHON3) -m venv $(VENV)
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e '.[dev,mtl,trackers,search]'
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)  ## one run with the default config; pass overrides as ARGS="..."
	$(BIN)/mtrec-train $(ARGS)

sweep: $(STAMP)  ## the reference 2 x 2 study (four runs of 200 epochs)
	$(BIN)/mtrec-train experiment=cs330 $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

test: lint  ## everything, as CI runs it, one worker per core
	$(BIN)/python -m pytest -n auto --dist loadgroup

test-fast: $(STAMP)  ## the inner loop: every test but those marked slow
	$(BIN)/python -m pytest -m "not slow" -x -q

bench: $(STAMP)  ## the scale, overhead and levers tables (time, memory), written into docs/performance.md
	$(BIN)/python benchmarks/epoch_time.py --write docs/performance.md $(ARGS)

# The newest sweep, its runs under their job names; DIR=outputs shows every run, DIR=<folder> one.
tensorboard: DIR ?= $(or $(patsubst %/,%,$(dir $(firstword $(shell ls -t outputs/sweeps/*/*/multirun.yaml 2>/dev/null)))),outputs)
tensorboard: $(STAMP)
	$(BIN)/tensorboard --logdir $(DIR)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
