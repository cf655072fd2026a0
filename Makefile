# Two entry points (see README): `make demo` and `make test`. Both create .venv/ on first use.
# `make demo` segments the shipped real CT with the shipped model (bundles/.../models/model.pt, no training).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.textseg-installed
PROMPT ?=
IMAGE ?=
BUNDLE := bundles/text_prompted_ct_segmentation
PYTEST_ARGS ?=

.PHONY: setup bundle serve-team demo demo-phantom train-real cross-patient field-of-view test serve simulate clean-outputs rotation clicks robustness

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

# The bundle as a model-zoo zip carrying its own code (model card: bundles/text_prompted_ct_segmentation/docs/README.md): dist/text_prompted_ct_segmentation_v<version>.zip
bundle: setup
	HF_HUB_OFFLINE=1 $(BIN)/textseg export-bundle --output dist

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/textseg demo $(if $(PROMPT),--prompt "$(PROMPT)") $(if $(IMAGE),--image "$(IMAGE)")

# The phantom demo: make phantoms, train the tiny bundle on CPU (about 12 min), segment the held-out phantoms.
demo-phantom: setup
	HF_HUB_OFFLINE=1 $(BIN)/textseg demo --phantom $(if $(PROMPT),--prompt "$(PROMPT)") $(if $(IMAGE),--image "$(IMAGE)")

# The real-CT recipe (configs/real_ct.json: the model, real_ct_train.json: data and augmentations) trains the shipped model models/model.pt
# on both real patients (examples/ct and ../shared/data/ct_tcia), held-out slabs excluded, in two stages: 66 epochs on 64x64x32 patches
# written to TRAIN_DIR/stage1.pt, then 4 epochs on 64^3 patches, the inference window (real_ct_finetune.json), into TRAIN_DIR/model.pt;
# 45 min alone on a 2-core CPU (2026-12-04). A killed run resumes from its last epoch when started again: stage 1 is skipped once stage1.pt
# exists (a run killed in stage 2), which is deleted when stage 2 completes. TRAIN_ARGS go to stage 1 (e.g. "--epochs 10 --output_dir /tmp/eval"),
# FINETUNE_ARGS to stage 2, TRAIN_DIR is where the model goes; FINETUNE_CONFIG= (empty) trains stage 1 alone, into model.pt.
# On a GPU, real size, one stage: make train-real TRAIN_CONFIGS="train.json real_ct.json real_ct_train.json real_ct_gpu.json" FINETUNE_CONFIG= (writes models/model_large.pt).
TRAIN_CONFIGS ?= train.json real_ct.json real_ct_train.json
FINETUNE_CONFIG ?= real_ct_finetune.json
TRAIN_DIR ?= $(BUNDLE)/models
TRAIN_ARGS ?=
FINETUNE_ARGS ?=
empty :=
space := $(empty) $(empty)
comma := ,
bundle_run = HF_HUB_OFFLINE=1 $(BIN)/python -m monai.bundle run \
	  --config_file "[$(subst $(space),$(comma),$(foreach c,$(1),'$(BUNDLE)/configs/$(c)'))]" \
	  --meta_file $(BUNDLE)/configs/metadata.json --logging_file $(BUNDLE)/configs/logging.conf --bundle_root $(BUNDLE) --ckpt_dir $(TRAIN_DIR)
train-real: setup
ifeq ($(strip $(FINETUNE_CONFIG)),)
	$(call bundle_run,$(TRAIN_CONFIGS)) $(TRAIN_ARGS)
else
	test -f $(TRAIN_DIR)/stage1.pt || $(call bundle_run,$(TRAIN_CONFIGS)) --ckpt_name stage1.pt $(TRAIN_ARGS)
	$(call bundle_run,$(TRAIN_CONFIGS) $(FINETUNE_CONFIG)) --ckpt_path $(TRAIN_DIR)/stage1.pt $(FINETUNE_ARGS)
	rm -f $(TRAIN_DIR)/stage1.pt
endif

# Cross-patient table (model card): train on one patient and test on the other, both ways, then evaluate the
# shipped model (both patients) on held-out slabs and training data; outputs/cross_patient. CROSS_ARGS e.g. "--epochs 20".
CROSS_ARGS ?=
cross-patient: setup
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/cross_patient.py $(CROSS_ARGS)

# Field-of-view table (model card): the shipped model on bands of slices of the example CT; outputs/field_of_view.
field-of-view: setup
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/field_of_view.py

# Lint (ruff, settings in pyproject.toml) then every test.
test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra --durations=15 $(PYTEST_ARGS)

# Active-learning simulation (README: "Active learning"); resumable, SIM_ARGS e.g. "--quick" or "--strategies random clasp_pe".
SIM_ARGS ?=

simulate: setup
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/simulate_active_learning.py $(SIM_ARGS)

clean-outputs:
	rm -rf outputs

# Rotation benchmark (README: "Orientation robustness"): Dice per rotation with/without canonicalization;
# trains the tiny bundle first when its checkpoint is missing. ROTATION_ARGS e.g. "--seeds 1001 --no-real-ct".
ROTATION_ARGS ?=

rotation: setup
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/bench_rotation.py $(ROTATION_ARGS)

# Click benchmark (README: "Orientation robustness and spatial prompts"): Dice after 0..5 corrective clicks; trains the
# tiny interactive model first when its checkpoint is missing or stale. CLICKS_ARGS e.g. "--seeds 1001 --modes sliding_window".
CLICKS_ARGS ?=

clicks: setup
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/bench_clicks.py $(CLICKS_ARGS)

# The rotation table (outputs/rotation) and the click curves (outputs/clicks) in one command.
robustness: rotation clicks

# MONAI Label app (README: "MONAI Label app"): the real example CT and phantom studies (or STUDIES=folder or
# DICOMweb URL) on 127.0.0.1, served with the shipped real-CT model. The phantom model:
# OVERLAY=tiny CHECKPOINT=$(BUNDLE)/models/model_tiny.pt MODELS=text_prompt,all_structures,interactive (after make demo-phantom).
STUDIES ?= data/serve/studies
OVERLAY ?= real_ct
CHECKPOINT ?= $(BUNDLE)/models/model.pt
PORT ?= 8000
MODELS ?= text_prompt,all_structures

# The team deployment (docs/team.md): Orthanc + MONAI Label on 127.0.0.1 behind nginx with TLS and basic auth on
# https://localhost:8443 (plain HTTP 8080 redirects). Add users first: .venv/bin/python -m textseg.serve add-user NAME
TEAM_PORT ?= 8443
serve-team: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m textseg.serve team --state data/team --port $(TEAM_PORT) \
	  --conf checkpoint "$(CHECKPOINT)" --conf bundle_overlay $(OVERLAY)

serve: setup
	@test -f "$(CHECKPOINT)" || { echo "make serve: no trained checkpoint at $(CHECKPOINT)."; \
	  echo "  The shipped model is models/model.pt (git checkout -- $(BUNDLE)/models/model.pt restores it);"; \
	  echo "  'make demo-phantom' trains the phantom model models/model_tiny.pt; or pass CHECKPOINT=/path/to/model.pt and OVERLAY."; exit 1; }
	@case "$(STUDIES)" in http*) ;; data/serve/studies) HF_HUB_OFFLINE=1 $(BIN)/python -m textseg.serve prepare-studies $(STUDIES) >/dev/null ;; esac
	PATH="$(CURDIR)/$(BIN):$$PATH" HF_HUB_OFFLINE=1 $(BIN)/monailabel start_server --app apps/textseg_app \
	  --studies "$(STUDIES)" --conf models $(MODELS) --conf bundle_overlay $(OVERLAY) --conf checkpoint "$(CHECKPOINT)" \
	  --host 127.0.0.1 --port $(PORT)
