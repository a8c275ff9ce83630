# napari-lpd developer commands. `make setup` is idempotent: a second run only re-checks
# the system packages. Everything runs from the project's own .venv.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-stamp
# torch first, at the pinned versions from constraints.txt (one source of truth), so the
# resolver never picks another torch build for the rest.
TORCH  := $(shell grep -E '^(torch|torchvision)==' constraints.txt)
PYTEST_ARGS ?=

.PHONY: setup demo test lint bench default-model

setup: $(STAMP)
	@scripts/system-deps.sh

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -c constraints.txt $(TORCH)
	$(BIN)/python -m pip install -c constraints.txt -e '.[napari,test]'
	@touch $@

demo: setup
	@if [ "$$(uname)" != Linux ] || [ -n "$${DISPLAY:-}$${WAYLAND_DISPLAY:-}" ]; then \
		$(BIN)/napari-lpd demo; \
	else \
		echo "No display: writing the demo's results to demo-out/"; \
		$(BIN)/lpd demo --out demo-out; \
	fi

# The whole default suite (slow tests excluded by pyproject's addopts); pytest-xvfb
# starts the X server the GUI tests need.
test: $(STAMP)
	@scripts/system-deps.sh --strict
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/lpd bench throughput

# Reproduce the shipped default model (src/lpd/weights/): its weights and card figures
# (about 6 minutes on 2 cores), then the short recipe's figure, then docs/model-card.md.
default-model: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 $(BIN)/python -m lpd.default_model
	OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 $(BIN)/python -m lpd.default_model --short
	$(BIN)/python scripts/update_model_card.py
