"""Shared test set-up for tests/core and tests/plugin."""

import os

# huggingface_hub reads this once, at import time: set it before any test imports timm.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
