# Two entry points (see README): `make demo` and `make test`. Both create .venv/ on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.textseg-installed
PROMPT ?= segment the liver and kidneys
IMAGE ?=
PYTEST_ARGS ?=

.PHONY: setup demo test serve clean-outputs

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

clean-outputs:
	rm -rf outputs
