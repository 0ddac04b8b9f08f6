"""The installed distribution's version, read from its metadata (pyproject.toml's)."""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "durable-adapter"
#: a source tree used without installing it has no metadata: a PEP 440 local version
#: that sorts below every release and says why
UNKNOWN = "0+unknown"


def version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return UNKNOWN
