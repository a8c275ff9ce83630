"""Shared test set-up for tests/core and tests/plugin."""

import os

# huggingface_hub reads this once, at import time: set it before any test imports timm.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# OpenMP reads this when torch loads it: passive waiting keeps two torch threads from
# collapsing when the two cores are shared (with Xvfb, napari's threads, subprocesses).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
