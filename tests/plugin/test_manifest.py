"""The npe2 manifest validates and every command it names can be imported."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

npe2 = pytest.importorskip("npe2")

MANIFEST = Path(__file__).resolve().parents[2] / "napari.yaml"


def _manifest() -> npe2.PluginManifest:
    return npe2.PluginManifest.from_file(MANIFEST)


def test_manifest_validates() -> None:
    manifest = _manifest()
    assert manifest.name == "napari-lpd"
    assert manifest.display_name == "LPD tissue segmentation"


@pytest.mark.parametrize(
    "command", _manifest().contributions.commands or [], ids=lambda command: command.id
)
def test_command_python_name_imports(command: npe2.manifest.contributions.CommandContribution):
    module_name, _, attr = command.python_name.partition(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, attr)), command.python_name


def test_sample_data_refers_to_declared_commands() -> None:
    manifest = _manifest()
    ids = {command.id for command in manifest.contributions.commands or []}
    samples = manifest.contributions.sample_data or []
    assert samples and all(sample.command in ids for sample in samples)
