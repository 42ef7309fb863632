# peft_bench: `make help` lists the targets.
SHELL := /bin/bash
PY := .venv/bin/python
TORCH_VERSION ?= 2.13.0
DATA ?= ../shared/data
export PEFT_BENCH_CACHE ?= $(CURDIR)/.cache/peft_bench

.PHONY: help setup test test-fast demo lint check-real clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

setup: ## create .venv and install peft_bench with its dev extras (torch $(TORCH_VERSION) first: CPU wheel here)
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[dev]'

test: ## run the test suite (CPU, no network, < 10 min on 2 cores)
	$(PY) -m pytest -q

test-fast: ## the tests not marked slow
	$(PY) -m pytest -q -m "not slow"

demo: ## offline demo sweep: LoRA rank 2,4,8 on generated sentences with pretrained MiniLM, then its table
	$(PY) -m peft_bench -m dataset=demo model=minilm rank=2,4,8 trainer.max_epochs=1 logger=csv

check-real: ## real SST-2 (../shared/data), MiniLM, LoRA r=8 on all linear layers, one epoch on CPU: val accuracy
	$(PY) -m peft_bench model=minilm dataset=sst2 rank=8 trainer.max_epochs=1 logger=csv \
	  method.target_modules=[query,key,value,dense] method.lr=1e-3 $(ARGS) \
	  "dataset.data_files={train:'$(DATA)/sst2/train.jsonl',validation:'$(DATA)/sst2/validation.jsonl'}"

lint: ## ruff
	$(PY) -m ruff check peft_bench tests

clean: ## remove Hydra outputs and the tokenization cache (keeps .venv)
	rm -rf outputs multirun .cache
