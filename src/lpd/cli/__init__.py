"""The headless ``lpd`` command."""
