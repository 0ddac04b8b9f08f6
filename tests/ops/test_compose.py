"""docker-compose.yml refers to things that exist (there is no Docker engine here to run it).

Each service has an image or a build context with a Dockerfile; every ``durable-adapter``
command parses with the real CLI parser; mounted files, the Dockerfile's COPY sources
and the load balancer's upstreams exist; ``depends_on`` names defined services, and a
``service_healthy`` condition points at a service with a healthcheck.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
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
    extras = re.search(r"^ARG EXTRAS=([\w,]+)$", text, flags=re.MULTILINE)
    assert extras is not None
    for extra in extras.group(1).split(","):
        assert f"\n{extra} = [" in (REPO / "pyproject.toml").read_text(), extra
    assert 'pip install --no-deps ".[$EXTRAS]"' in text


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


def _dockerfile_steps() -> list[tuple[str, str]]:
    """(instruction, arguments) of each Dockerfile step, continuation lines joined."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", "")
    steps = [line.split(None, 1) for line in text.splitlines()
             if line.strip() and not line.startswith("#")]
    return [(step[0], step[1] if len(step) > 1 else "") for step in steps]


def test_the_dependency_layer_needs_only_pyproject(tmp_path: Path) -> None:
    steps = _dockerfile_steps()
    copies = [i for i, (op, _) in enumerate(steps) if op == "COPY"]
    first_copy, code_copy = copies[0], next(
        i for i in copies if "durable_adapter" in steps[i][1].split())
    assert steps[first_copy][1].split() == ["pyproject.toml", "./"]
    installs = [i for i in range(first_copy, code_copy)
                if steps[i][0] == "RUN" and "pip install -r" in steps[i][1]]
    assert installs, "no dependency install between COPY pyproject.toml and the code"
    # what that step hands to pip, run here on the real pyproject.toml
    listing = steps[installs[0]][1].split(" && pip install", 1)[0]
    (tmp_path / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    extras = re.search(r"^ARG EXTRAS=([\w,]+)$", (REPO / "Dockerfile").read_text(),
                       flags=re.MULTILINE)
    assert extras is not None
    written = tmp_path / "requirements.txt"
    subprocess.run(["sh", "-c", listing.replace("/tmp/requirements.txt", str(written))],
                   cwd=tmp_path, env={**os.environ, "EXTRAS": extras.group(1),
                                      "PATH": f"{Path(sys.executable).parent}:"
                                              + os.environ.get("PATH", "")},
                   check=True, timeout=60)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in extras.group(1).split(","):
        wanted += project["optional-dependencies"][extra]
    assert written.read_text().split() == wanted


def test_the_image_healthcheck_runs_the_shipped_probe() -> None:
    steps = _dockerfile_steps()
    copied = {args.split()[-1]: args.split()[0] for op, args in steps if op == "COPY"}
    healthcheck = [args for op, args in steps if op == "HEALTHCHECK"]
    assert len(healthcheck) == 1
    probe = json.loads(healthcheck[0].split("CMD", 1)[1])
    assert probe[0] == "python" and copied[probe[1]] == "deploy/healthcheck.py"


def test_the_load_balancer_waits_for_healthy_nodes(
        services: dict[str, dict[str, Any]]) -> None:
    for node in ("node1", "node2"):
        assert services["lb"]["depends_on"][node] == {"condition": "service_healthy"}


def test_node_healthchecks_probe_what_the_node_serves(
        services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    image_probe = json.loads(next(args for op, args in _dockerfile_steps()
                                  if op == "HEALTHCHECK").split("CMD", 1)[1])
    has_check = re.search(r"^\s+check\s", cli.build_parser().format_help(), flags=re.M)
    for node in ("node1", "node2"):
        args = _cli_args(services, node)
        service = services[node]
        env = service["environment"]
        assert env["DURABLE_ADAPTER_STORE_URL"] == args.store
        assert int(env["DURABLE_ADAPTER_PORT"]) == args.port
        kind, shell = service["healthcheck"]["test"]
        assert kind == "CMD-SHELL"
        store_check, probe = (shlex.split(part) for part in shell.split("&&"))
        assert probe == image_probe
        assert store_check[0] == "durable-adapter"
        if not has_check:
            pytest.skip("durable-adapter check is not in this tree yet")
        with monkeypatch.context() as patched:  # the container's environment
            for name, value in env.items():
                patched.setenv(name, str(value))
            parsed = cli.build_parser().parse_args(store_check[1:])
        assert (parsed.command, parsed.store) == ("check", args.store)


def test_the_cleanup_worker_healthcheck_checks_its_store(
        services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    cleanup = services["cleanup"]
    kind, *command = cleanup["healthcheck"]["test"]
    assert kind == "CMD" and command[:2] == ["durable-adapter", "check"]
    if not re.search(r"^\s+check\s", cli.build_parser().format_help(), flags=re.M):
        pytest.skip("durable-adapter check is not in this tree yet")
    for name, value in cleanup["environment"].items():
        monkeypatch.setenv(name, str(value))
    parsed = cli.build_parser().parse_args(command[1:])
    assert parsed.store == _cli_args(services, "cleanup").store


def test_the_one_shot_migration_has_no_server_healthcheck(
        services: dict[str, dict[str, Any]]) -> None:
    assert services["migrate"]["healthcheck"] == {"disable": True}


def test_mongo_is_opt_in_and_reachable_from_this_host_only(
        services: dict[str, dict[str, Any]]) -> None:
    mongo = services["mongo"]
    assert mongo.get("profiles") == ["mongo"]
    assert not any("mongo" in (s.get("depends_on") or {}) for s in services.values())
    for port in mongo.get("ports", []):
        assert str(port).startswith("127.0.0.1:"), port
