# samrl: RL for reasoning segmentation with SAM2 in the reward loop.
# `make test` sets up the locked environment when needed and runs the tests.

PYTHON ?= python3
VENV ?= .venv
UV_VERSION := 0.13.8
BIN := $(VENV)/bin
STAMP := $(VENV)/.samrl-setup
# The CUDA extension of sam2 only fills mask holes, which the image predictor does not use here.
export SAM2_BUILD_CUDA ?= 0
# Ray and vLLM stay on loopback on one machine and in tests.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export VLLM_HOST_IP ?= 127.0.0.1

PYTEST_ARGS ?=

.PHONY: setup test test-learn lint format bench bench-reward bench-step bench-eval bench-learn gpu-check docs docs-serve data data-samr1-10k data-grefcoco data-veteran smoke train-samr1 \
	train-veteran eval eval-checkpoints eval-smoke infer demo lock clean-venv flash-attn

setup: $(STAMP)

# Re-runs only when the lock or the project metadata change, so a second `make setup` is instant.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	@# Bytecode at install time: Python never writes it where PYTHONDONTWRITEBYTECODE is set (CI, many containers), and
	@# then every Ray worker of every launch compiles torch, transformers and verl again (35 s instead of 15 s a process).
	$(BIN)/uv pip sync --compile-bytecode --python $(BIN)/python requirements.lock
	@# compat mode puts the checkout on sys.path: transferqueue ships a top-level recipe/ directory in site-packages,
	@# and a regular package on sys.path wins over that namespace directory (PEP 420).
	$(BIN)/uv pip install --python $(BIN)/python --no-deps --editable . --config-settings editable_mode=compat
	@touch $@

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The learning checks of tests/test_learning.py, both tiers: make test's (SAM-R1's first steps, its frozen-rollout
# control, a run killed twice) and both recipes' 14-step learning runs with their frozen-rollout controls, and both
# recipes' negated-reward controls, which only this runs.
test-learn: $(STAMP)
	VERL_PLATFORM=cpu $(BIN)/python -m pytest --learning tests/test_learning.py $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python -m bench

# SAM2 reward server versus the naive predictor loop; pass flags with ARGS="--model sam2.1_hiera_l ...".
bench-reward: $(STAMP)
	$(BIN)/python -m bench.reward $(ARGS)

# A training step's cost and SAM2's share of it, per recipe, from verl's timing metrics of a real CPU run (docs/cpu-run.md).
bench-step: $(STAMP)
	VERL_PLATFORM=cpu $(BIN)/python -m bench.step $(ARGS)

# The evaluator's batched path against a per-sample generate + SAM2 predictor loop, tiny models on a CPU (docs/evaluation.md).
bench-eval: $(STAMP)
	$(BIN)/python -m bench.eval $(ARGS)

# Does training improve the policy? Each recipe's warm-started tiny model through verl's real trainer on a CPU, and a
# control whose rollout never receives the new weights; one line per recipe (docs/learning.md).
bench-learn: $(STAMP)
	VERL_PLATFORM=cpu $(BIN)/python -m bench.learn $(ARGS)

# One GPU in at most 8 minutes: both recipes for 2 steps on vLLM, the GPU tests, parity checks, SAM2-Large throughput
# (ARGS="--bare": PyTorch alone; ARGS="--quick": the CPU dry run). docs/gpu-check.md.
gpu-check: $(STAMP)
	$(BIN)/python -m bench.gpu_check $(ARGS)

# Both recipes through verl's real trainer on a CPU (tiny models, synthetic data): 2 steps, then a resumed 3rd (docs/cpu-run.md).
smoke: $(STAMP)
	VERL_PLATFORM=cpu $(BIN)/python -m recipe.smoke $(ARGS)

# SAM-R1 training on a GPU node; Hydra overrides go in ARGS="key=value ...".
train-samr1: $(STAMP)
	$(BIN)/python -m recipe.samr1.main $(ARGS)

# SAM-Veteran training on GPU nodes (after make data and make data-veteran); overrides in ARGS.
train-veteran: $(STAMP)
	$(BIN)/python -m recipe.veteran.main $(ARGS)

# Optional, on a GPU node: flash-attn has no binary wheel for the locked torch, so it is compiled here (needs nvcc;
# a long build, MAX_JOBS=N bounds its memory use).
# The recipes then use it with the overrides
#   actor_rollout_ref.model.use_remove_padding=true actor_rollout_ref.model.override_config.attn_implementation=flash_attention_2
flash-attn: $(STAMP)
	@command -v nvcc >/dev/null || { echo "make flash-attn: nvcc not found; install the CUDA toolkit matching torch (or put its bin/ on PATH)"; exit 2; }
	$(BIN)/uv pip install --python $(BIN)/python flash-attn --no-build-isolation

# Datasets (docs/data.md): REFER_ROOT holds refcoco/, refcoco+/, refcocog/ (instances.json, refs(*).p);
# COCO_IMAGES is COCO train2014; REASONSEG_ROOT holds train/, val/, test/ (optional). Outputs go to DATA_DIR.
# VETERAN_IDS: a file of RefCOCOg ref_ids (one per line) for SAM-Veteran's grounding set instead of a random 9,000.
DATA_DIR ?= data
DATA_WORKERS ?= 8
REFER = $(BIN)/python -m data_prep refer --refer-root "$(REFER_ROOT)" --image-root "$(COCO_IMAGES)" --workers $(DATA_WORKERS)
GREFCOCO = $(BIN)/python -m data_prep grefcoco --root "$(GREFCOCO_ROOT)" --image-root "$(COCO_IMAGES)" --workers $(DATA_WORKERS)

data: $(STAMP)
	@test -n "$(REFER_ROOT)" -a -n "$(COCO_IMAGES)" || { echo "make data: set REFER_ROOT=... COCO_IMAGES=... [REASONSEG_ROOT=...]"; exit 2; }
	$(REFER) --dataset refcocog --split train --limit 3000 --seed 0 --recipe samr1 --out $(DATA_DIR)/samr1/refcocog_train_3k.parquet
	$(REFER) --dataset refcocog --split train --limit 9000 --seed 0 --recipe veteran $(if $(VETERAN_IDS),--ids "$(VETERAN_IDS)") \
		--out $(DATA_DIR)/veteran/grounding_9k.parquet
	$(REFER) --dataset refcoco --split testA --out $(DATA_DIR)/eval/refcoco_testA.parquet
	$(REFER) --dataset refcoco+ --split testA --out $(DATA_DIR)/eval/refcoco+_testA.parquet
	$(REFER) --dataset refcocog --split test --out $(DATA_DIR)/eval/refcocog_test.parquet
	@if [ -n "$(REASONSEG_ROOT)" ]; then for split in val test; do \
		$(BIN)/python -m data_prep reasonseg --root "$(REASONSEG_ROOT)" --split $$split --out $(DATA_DIR)/eval/reasonseg_$$split.parquet || exit 1; \
	done; else echo "REASONSEG_ROOT not set: ReasonSeg evaluation sets skipped"; fi

# SAM-R1's Table 6: 10,000 RefCOCOg train expressions (+ablation=data_10k trains on them).
data-samr1-10k: $(STAMP)
	@test -n "$(REFER_ROOT)" -a -n "$(COCO_IMAGES)" || { echo "make data-samr1-10k: set REFER_ROOT=... COCO_IMAGES=..."; exit 2; }
	$(REFER) --dataset refcocog --split train --limit 10000 --seed 0 --recipe samr1 --out $(DATA_DIR)/samr1/refcocog_train_10k.parquet

# Several objects or none (docs/generalized.md): GREFCOCO_ROOT holds grefs(unc).json and instances.json;
# training rows for +ablation=generalized and +veteran_ablation=generalized, evaluation rows in DATA_DIR/eval_grefcoco.
data-grefcoco: $(STAMP)
	@test -n "$(GREFCOCO_ROOT)" -a -n "$(COCO_IMAGES)" || { echo "make data-grefcoco: set GREFCOCO_ROOT=... COCO_IMAGES=..."; exit 2; }
	$(GREFCOCO) --split train --limit 3000 --seed 0 --recipe samr1 --out $(DATA_DIR)/samr1/grefcoco_train_3k.parquet
	$(GREFCOCO) --split train --limit 9000 --seed 0 --recipe veteran --out $(DATA_DIR)/veteran/grefcoco_grounding_9k.parquet
	@for split in val testA testB; do \
		$(GREFCOCO) --split $$split --out $(DATA_DIR)/eval_grefcoco/grefcoco_$$split.parquet || exit 1; \
	done

# SAM-Veteran's mask-comprehension and auxiliary sets; runs SAM2 (set SAM2_CHECKPOINT; a GPU is much faster).
data-veteran: $(STAMP)
	@test -n "$(SAM2_CHECKPOINT)" || { echo "make data-veteran: set SAM2_CHECKPOINT=/path/sam2.1_hiera_large.pt (or a hub id)"; exit 2; }
	$(BIN)/python -m data_prep veteran --grounding $(DATA_DIR)/veteran/grounding_9k.parquet \
		--out-mask $(DATA_DIR)/veteran/mask_comprehension.parquet --out-aux $(DATA_DIR)/veteran/auxiliary.parquet \
		--sam large --sam-checkpoint "$(SAM2_CHECKPOINT)"

# Evaluation (docs/evaluation.md): MODEL is a Hugging Face checkpoint, DATA parquet files or directories of them
# (space-separated), MODE samr1 | veteran | baseline | oracle_box; Hydra overrides in ARGS. A rerun resumes.
MODE ?= samr1
DATA ?= $(DATA_DIR)/eval
comma := ,
empty :=
space := $(empty) $(empty)
EVAL_OUT ?= outputs/eval/$(MODE)$(if $(MODEL),-$(notdir $(patsubst %/,%,$(MODEL))))

eval: $(STAMP)
	@test -n "$(MODEL)" -o "$(MODE)" = oracle_box || { echo "make eval: set MODEL=/path/to/hf_checkpoint [DATA=...] [MODE=...]"; exit 2; }
	$(BIN)/python -m recipe.evaluate mode=$(MODE) $(if $(MODEL),model.path=$(MODEL)) \
		'data.files=[$(subst $(space),$(comma),$(strip $(DATA)))]' output_dir=$(EVAL_OUT) $(ARGS)

# Every checkpoint of a training run (docs/evaluation.md): RUN is the run's directory (its checkpoints/global_step_*),
# each merged by verl's model merger and evaluated like make eval; a table and plot of gIoU/cIoU against the step go
# to OUT (default RUN/eval_checkpoints). A rerun resumes.
eval-checkpoints: $(STAMP)
	@test -n "$(RUN)" || { echo "make eval-checkpoints: set RUN=outputs/samrl/<exp> [DATA=...] [MODE=samr1|veteran] [OUT=...]"; exit 2; }
	$(BIN)/python -m recipe.evaluate.checkpoints --run "$(RUN)" $(foreach file,$(DATA),--data $(file)) --mode $(MODE) \
		$(if $(OUT),--out "$(OUT)") $(ARGS)

# One image (docs/segment-one-image.md): prints each step's reasoning and answer, writes step PNGs and the final
# mask (PNG and COCO RLE) under OUT (default outputs/infer/<image stem>); options and Hydra overrides in ARGS.
infer: $(STAMP)
	@test -n "$(MODEL)" -a -n "$(IMAGE)" -a -n "$(QUESTION)" || { echo 'make infer: set MODEL=/path/to/hf_checkpoint IMAGE=photo.jpg QUESTION="..." [MODE=samr1|veteran] [OUT=...]'; exit 2; }
	$(BIN)/python -m recipe.evaluate.infer --model "$(MODEL)" --image "$(IMAGE)" --question "$(QUESTION)" --mode $(MODE) \
		$(if $(OUT),--out "$(OUT)") $(ARGS)

# A web page for one image at a time (docs/segment-one-image.md) on http://127.0.0.1:$(PORT); options and Hydra overrides
# in ARGS (--sam-checkpoint ..., --host ...).
PORT ?= 7860
demo: $(STAMP)
	@test -n "$(MODEL)" || { echo 'make demo: set MODEL=/path/to/hf_checkpoint [MODE=samr1|veteran] [PORT=7860] [ARGS="--sam-checkpoint ..."]'; exit 2; }
	$(BIN)/python -m recipe.evaluate.demo --model "$(MODEL)" --mode $(MODE) --port $(PORT) $(ARGS)

# Every evaluation mode on a CPU: synthetic evaluation sets, tiny random models; prints the gIoU/cIoU table.
eval-smoke: $(STAMP)
	$(BIN)/python -m data_prep.smoke eval-sets outputs/eval_smoke/data
	$(BIN)/python -m recipe.evaluate.smoke --data outputs/eval_smoke/data/eval $(ARGS)

# Regenerates requirements.lock from pyproject.toml: one universal lock (CPython 3.11 and 3.12, CPU-only and GPU
# nodes alike) with hashes.
# The manual (docs/, mkdocs.yml): built strictly; the test suite runs the same build (tests/test_docs.py).
SITE_DIR ?= outputs/site
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --clean --site-dir "$(SITE_DIR)"

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:8000

lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 --generate-hashes \
		--no-header --quiet -o requirements.lock

clean-venv:
	rm -rf $(VENV)
