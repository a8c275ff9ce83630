"""Dock widgets of the napari-lpd plugin (GUI state only; computations live in lpd)."""
