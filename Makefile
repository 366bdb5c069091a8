# vlv-pipeline: `make run` runs the default pipeline, `make test` the test suite, `make demo`
# serves the demo page on 127.0.0.1 (ARGS="--env paper --port N").
# Each creates .venv on first use (pinned by constraints.txt) and reuses it afterwards.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0

# Nothing in the default environment phones home or reaches a model hub.
export KEDRO_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: run test demo lint bench viz rehearsal clean-venv

# `make run` installs only what the pipelines import: the test and demo extras (gradio,
# playwright, jupyter, wandb) add about 15 s to a first run's venv and nothing to the run.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Pinned first, on its own: an open range could pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -c constraints.txt -e .
	touch $@

$(VENV)/.installed-demo: $(VENV)/.installed
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[demo]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test,demo]"
	touch $@

# The tests add the mlflow extra (tests/test_mlflow_real.py runs the real tracking path; it is
# off unless VLV_MLFLOW=1). `make run` does without it: a first run's venv stays small and
# quick, and kedro commands do not import mlflow for kedro-mlflow's CLI.
$(VENV)/.installed-mlflow: $(VENV)/.installed-test
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test,demo,mlflow]"
	touch $@

run: $(VENV)/.installed
	$(BIN)/kedro run $(ARGS)
	@echo "Outputs are under data/ (manifest: data/02_intermediate, models: data/06_models, report: data/08_reporting)."

test: $(VENV)/.installed-mlflow
	$(BIN)/python -m pytest $(ARGS)

# The demo page (src/vlv_pipeline/demo.py) for the latest models `make run` trained; Ctrl+C stops it.
demo: $(VENV)/.installed-demo
	$(BIN)/python -m vlv_pipeline demo $(ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

bench: $(VENV)/.installed
	$(BIN)/python bench/bench_ingest.py
	$(BIN)/python bench/bench_stage1_cache.py
	$(BIN)/python bench/bench_stage1_data.py
	$(BIN)/python bench/bench_stage2.py
	$(BIN)/python bench/gpu_smoke.py $$($(BIN)/python -c "import torch; print('' if torch.cuda.is_available() else '--tiny')")

# The paper's path (Florence-2, SD-2.1-shaped T2I, Qwen2; 384 px webdataset shards) at toy
# size, offline on CPU: run it before renting GPUs. Writes under data/rehearsal/.
rehearsal: $(VENV)/.installed
	$(BIN)/kedro run --env rehearsal --pipelines world,rehearsal $(ARGS)
	$(BIN)/kedro run --env rehearsal --pipeline vlv $(ARGS)

viz: $(VENV)/.installed
	$(BIN)/kedro viz build

clean-venv:
	rm -rf $(VENV)
