# sdbatch — run `make help` for the targets.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH_PIN ?= torch==2.13.0

.DEFAULT_GOAL := help
.PHONY: help install run test quick lint format bench clean

help:  ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv and install sdbatch (editable, with test extras)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# A bare `torch` would pull a multi-GB CUDA build; pin the CPU wheel when none is installed.
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_PIN)"
	@# The editable install maps recipes/ to sdbatch.recipes with an import hook, and setuptools
	@# says so with an "Editable installation." notice each time: nothing to act on.
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

run: install  ## install if needed, then run the demo recipe (sdbatch +recipe=shapes_demo)
	$(VENV)/bin/sdbatch +recipe=shapes_demo

quick: install  ## a few seconds: the quick recipe
	$(VENV)/bin/sdbatch +recipe=quick

# Test files run side by side, one worker per core (pytest-xdist); each file stays on one worker
# and the cluster tests share one (tests/conftest.py). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= logical
test: install  ## install if needed, then run the import contracts and the whole test suite
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/python -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadgroup

lint: install  ## ruff check + format check + the package layers (import-linter)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

format: install  ## ruff fix + format
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install  ## benchmarks (see BENCHMARKS.md)
	$(VENV)/bin/python bench/run.py

.PHONY: bench-editing
bench-editing: install  ## prompt editing vs a plain prompt, one 4-image batch, 20 steps, CPU (~1 min)
	$(VENV)/bin/python bench/editing.py $(ARGS)

.PHONY: bench-lora
bench-lora: install  ## switching LoRA sets between batches vs a batch's render, CPU (~1-2 min)
	$(VENV)/bin/python bench/lora_switch.py $(ARGS)

.PHONY: bench-cpu
bench-cpu: install  ## CPU speed: fp32 vs bf16 side by side, bf16 judged, torch.compile (BENCHMARKS.md)
	$(VENV)/bin/python bench/run.py --ways "a',b,b8,c,a' bf16,b bf16,b8 bf16,c bf16" --jobs cpu --reps 3 \
		--skip-scale --dtype-check --settings-check --compile-check --section cpu $(ARGS)

.PHONY: bench-gpu
bench-gpu: install  ## CUDA GPU benchmark, SD 1.5 shapes with random weights (ARGS='--sdxl')
	$(VENV)/bin/python bench/gpu.py $(ARGS)

.PHONY: docs
docs: install  ## build the documentation site into site/ (mkdocs, warnings are errors)
	$(VENV)/bin/mkdocs build --strict --site-dir site

clean:  ## remove outputs and caches (keeps .venv)
	rm -rf outputs .pytest_cache .ruff_cache

# The shapes-world embedded model (sdbatch/shapes, sdbatch/shapes/train.py).
TINY_OUT  ?= build/sdbatch-shapes
TINY_WORK ?= build/shapes-work
.PHONY: train-tiny eval-tiny train-lora train-controlnet

train-tiny: install  ## train the shapes model on CPU (~55 min on 2 cores, resumable) into build/sdbatch-shapes
	$(PY) -m sdbatch.shapes.train --out $(TINY_OUT) --work $(TINY_WORK) --threads 2

train-lora: install  ## train the example LoRA (orange shapes) for the embedded model on 1 CPU thread into examples/webui/models/Lora/
	OMP_NUM_THREADS=1 $(PY) -m sdbatch.shapes.train_lora --threads 1

train-controlnet: install  ## train the example ControlNet (shape position from a mask) for the embedded model on 1 CPU thread into examples/webui/models/ControlNet/
	OMP_NUM_THREADS=1 $(PY) -m sdbatch.shapes.train_controlnet --threads 1

eval-tiny: install  ## judge the trained model: every sampler, CFG 7 and 1, 20 steps
	$(PY) -m sdbatch.shapes.evaluate --model $(TINY_OUT) --out build/eval-tiny/report.md

.PHONY: train-embedding
train-embedding: install  ## train the example embedding "fuchsia" (magenta) for the shapes model (~1-2 min, 1 thread) into examples/webui/embeddings
	OMP_NUM_THREADS=1 $(PY) -m sdbatch.shapes.train_embedding --threads 1
