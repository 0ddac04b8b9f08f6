"""A server in Docker for the tests, when the machine has a Docker engine and the docker
extra (testcontainers); the MongoDB, PostgreSQL and Redis helpers use it when no server of
theirs is given. Without an engine nothing is imported and nothing is started.
"""

from __future__ import annotations

import atexit
import gc
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

DOCKER_SOCKET = "/var/run/docker.sock"
READY_WITHIN = 60.0  # seconds a started container gets to accept connections


def engine_reachable() -> bool:
    """A Docker engine is configured here (``DOCKER_HOST``, or the usual socket)."""
    return bool(os.environ.get("DOCKER_HOST")) or os.path.exists(DOCKER_SOCKET)


def _started(image: str, port: int, configure: Callable[[Any], Any]) -> Any:
    try:
        from testcontainers.core.container import DockerContainer  # type: ignore[import-not-found]

        container = configure(DockerContainer(image).with_exposed_ports(port))
        container.start()
    except Exception:  # testcontainers missing, or the engine refused
        return None
    return container


def start(image: str, port: int, *, ready: Callable[[str, int], bool],
          configure: Callable[[Any], Any] = lambda container: container) -> tuple[str, int] | None:
    """Start ``image`` exposing ``port``; ``(host, mapped port)`` once ``ready(host, port)``
    is true, or None without Docker or testcontainers. Stopped when the run exits."""
    if not engine_reachable():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        container = _started(image, port, configure)
        gc.collect()  # docker-py leaves a socket open when it fails: closed here, quietly
    if container is None:
        return None
    atexit.register(container.stop)
    host, mapped = container.get_container_host_ip(), int(container.get_exposed_port(port))
    deadline = time.monotonic() + READY_WITHIN
    while not ready(host, mapped):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{image} started in Docker but not ready in {READY_WITHIN} s")
        time.sleep(0.2)  # polling the server's own readiness check
    return host, mapped
