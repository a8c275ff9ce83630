"""Files: checkpoints (safetensors + JSON config) and exports."""
