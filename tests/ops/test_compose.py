"""docker-compose.yml refers to things that exist (there is no Docker engine here to run it).

Each service has an image or a build context with a Dockerfile; every ``durable-adapter``
command parses with the real CLI parser; mounted files, the Dockerfile's COPY sources
and the load balancer's upstreams exist; ``depends_on`` names defined services, and a
``service_healthy`` condition points at a service with a healthcheck.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from durable_adapter import cli
from durable_adapter.demo.app import RECOVERY

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    return document["services"]


@pytest.fixture(autouse=True)
def _no_env_twins(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STORE_URL", "HOST", "PORT", "CLEANUP_INTERVAL", "CLEANUP_ONCE", "RETENTION",
                 "MAX_DISCONNECTION_DURATION", "BATCH_SIZE"):
        monkeypatch.delenv(f"DURABLE_ADAPTER_{name}", raising=False)


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _cli_args(services: dict[str, dict[str, Any]], name: str) -> Any:
    command = _command(services[name])
    assert command[:1] == ["durable-adapter"], f"{name}: {command}"
    return cli.build_parser().parse_args(command[1:])


def test_the_stack_has_its_pieces(services: dict[str, dict[str, Any]]) -> None:
    subcommands = {name: _command(s)[1] for name, s in services.items()
                   if _command(s)[:1] == ["durable-adapter"]}
    assert sorted(subcommands.values()) == ["cleanup", "demo", "demo", "migrate"]
    assert "healthcheck" in services["postgres"]
    assert services["postgres"]["image"].startswith("postgres:")


def test_every_service_has_an_image_or_a_buildable_context(
        services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        build = service.get("build")
        if build is None:
            continue
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile",
                                                                           "Dockerfile")
        assert (REPO / context / dockerfile).is_file(), f"{name}: no {context}/{dockerfile}"


def test_the_dockerfile_copies_files_that_exist() -> None:
    text = (REPO / "Dockerfile").read_text()
    sources = [part for line in text.splitlines() if line.startswith("COPY ")
               for part in line.split()[1:-1]]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
    extras = re.search(r'pip install "\.\[([\w,]+)\]"', text)
    assert extras is not None
    for extra in extras.group(1).split(","):
        assert f"\n{extra} = [" in (REPO / "pyproject.toml").read_text(), extra


def test_every_durable_adapter_command_parses(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        command = _command(service)
        if command[:1] != ["durable-adapter"]:
            continue
        args = _cli_args(services, name)
        url = make_url(args.store)
        assert url.drivername == "postgresql+asyncpg", name
        assert url.host in services, f"{name}: store host {url.host} is not a service"
        env = services[url.host]["environment"]
        assert (url.username, url.password, url.database) == (
            env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"]), name


def test_cleanup_matches_the_servers_recovery_window(services: dict[str, dict[str, Any]]) -> None:
    args = _cli_args(services, "cleanup")
    assert args.max_disconnection_duration == RECOVERY["max_disconnection_duration"]
    assert args.retention is None or args.retention >= args.max_disconnection_duration
    assert not args.once


def test_depends_on_refers_to_defined_services(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on", {})
        items = depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends)
        for target, options in items:
            assert target in services, f"{name} depends on undefined {target}"
            condition = (options or {}).get("condition", "service_started")
            assert condition in CONDITIONS, condition
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck"
            if condition == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", target


def test_mounted_files_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name}: {source} is missing"


def test_the_load_balancer_spreads_over_the_demo_nodes(
        services: dict[str, dict[str, Any]]) -> None:
    mounts = [v.split(":")[0] for v in services["lb"]["volumes"]]
    config = (REPO / mounts[0]).read_text()
    directives = "\n".join(line.split("#", 1)[0] for line in config.splitlines())
    upstreams = re.findall(r"^\s*server\s+([\w-]+):(\d+);", config, flags=re.MULTILINE)
    assert len(upstreams) >= 2
    for host, port in upstreams:
        args = _cli_args(services, host)
        assert args.command == "demo" and args.host == "0.0.0.0" and args.port == int(port)
        assert host in services["lb"]["depends_on"]
    # no sticky sessions; WebSocket upgrade forwarded
    assert not re.search(r"\b(ip_hash|hash|sticky)\b", directives)
    assert "proxy_set_header Upgrade $http_upgrade" in config
    page = (REPO / "durable_adapter" / "demo" / "index.html").read_text()
    assert "transports=websocket" in config and '"transports") === "websocket"' in page
