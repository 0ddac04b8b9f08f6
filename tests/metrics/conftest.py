"""Fixtures of the metrics tests: a fresh registry per test, and reading its samples."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from durable_adapter import metrics

prometheus_client = pytest.importorskip("prometheus_client")

LAG_INTERVAL = 0.05  # seconds between lag probes in these tests


@pytest.fixture
def registry() -> Iterator[object]:
    """Metrics counted on a registry of this test only; the global one again after."""
    fresh = prometheus_client.CollectorRegistry()
    metrics.enable(registry=fresh, lag_interval=LAG_INTERVAL)
    try:
        yield fresh
    finally:
        metrics.enable()


def sample(registry: object, name: str, **labels: str) -> float:
    """The value of one sample, 0 when it was never recorded."""
    value = registry.get_sample_value(name, labels)  # type: ignore[attr-defined]
    return 0.0 if value is None else float(value)
