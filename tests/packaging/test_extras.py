"""The pip extras: each one brings something, and the install hints name real ones."""

from __future__ import annotations

import tomllib
from pathlib import Path

from durable_adapter.stores import _STORES

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def extras() -> dict[str, list[str]]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    return dict(project["optional-dependencies"])


def test_no_extra_is_empty() -> None:
    # an empty extra installs nothing: `pip install durable-adapter[x]` would promise a
    # driver and bring none
    assert [name for name, requirements in extras().items() if not requirements] == []


def test_store_hints_name_extras_that_exist() -> None:
    named = {extra for _, _, extra in _STORES.values() if extra is not None}
    assert named <= set(extras())


def test_sqlite_needs_no_extra() -> None:
    assert _STORES["sqlite+aiosqlite"][2] is None
