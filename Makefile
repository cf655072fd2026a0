# Two entry points (see README): `make demo` and `make test`. Both create .venv/ on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.textseg-installed
PROMPT ?= segment the liver and kidneys
IMAGE ?=
PYTEST_ARGS ?=

.PHONY: setup demo test serve simulate clean-outputs rotation clicks robustness

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/textseg demo --prompt "$(PROMPT)" $(if $(IMAGE),--image "$(IMAGE)")

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

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

# Issue 8 in one command: the rotation table (outputs/rotation) and the click curves (outputs/clicks).
robustness: rotation clicks

# MONAI Label app (README: "MONAI Label app"): phantom studies (or STUDIES=folder or DICOMweb URL) on 127.0.0.1.
STUDIES ?= data/serve/studies
CHECKPOINT ?= bundles/text_prompted_ct_segmentation/models/model_tiny.pt
PORT ?= 8000
MODELS ?= text_prompt,all_structures,interactive

serve: setup
	@test -f "$(CHECKPOINT)" || { echo "make serve: no trained checkpoint at $(CHECKPOINT)."; \
	  echo "  Run 'make demo' first (trains the tiny bundle on phantoms, about 12 minutes on a CPU, and writes it there),"; \
	  echo "  or pass CHECKPOINT=/path/to/model.pt (with the matching bundle overlay)."; exit 1; }
	@case "$(STUDIES)" in http*) ;; data/serve/studies) HF_HUB_OFFLINE=1 $(BIN)/python -m textseg.app_support prepare-studies $(STUDIES) >/dev/null ;; esac
	PATH="$(CURDIR)/$(BIN):$$PATH" HF_HUB_OFFLINE=1 $(BIN)/monailabel start_server --app apps/textseg_app \
	  --studies "$(STUDIES)" --conf models $(MODELS) --conf bundle_overlay tiny --conf checkpoint "$(CHECKPOINT)" \
	  --host 127.0.0.1 --port $(PORT)
