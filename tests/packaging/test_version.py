"""The version a user reads matches what pip installed, and the licence ships."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import durable_adapter

REPO = Path(__file__).resolve().parents[2]


def test_version_is_the_installed_distributions() -> None:
    assert durable_adapter.__version__ == metadata.version("durable-adapter")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert durable_adapter.__version__ == pyproject["version"]


def test_cli_prints_the_version() -> None:
    result = subprocess.run([sys.executable, "-m", "durable_adapter", "--version"],
                            capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == f"durable-adapter {durable_adapter.__version__}"


def test_the_license_is_mit_and_named_in_the_metadata() -> None:
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "the durable_adapter authors" in text
    classifiers = metadata.metadata("durable-adapter").get_all("Classifier") or []
    assert "License :: OSI Approved :: MIT License" in classifiers
