"""The ``durable-adapter`` command (also ``python -m durable_adapter``).

Subcommands::

    durable-adapter --version
    durable-adapter demo    [--store URL] [--host HOST] [--port PORT] [--flask]
    durable-adapter migrate --store URL [--sql]
    durable-adapter check   --store URL [--schema NAME] [--timeout SECONDS]
    durable-adapter cleanup --store URL [--interval SECONDS] [--once] [--retention SECONDS]
                            [--vacuum]
                            [--metrics-port N [--metrics-host HOST]]

Every flag can also come from an environment variable (shown in ``--help``); a flag
given on the command line wins over its variable.

Adding a subcommand: write ``_add_<name>(subparsers)`` that builds its parser and sets
``func`` to a ``_run_<name>(args) -> int``, then list it in :data:`SUBCOMMANDS`.
Library errors (:class:`DurableAdapterError`) are caught once, in :func:`main`.

Only this module configures logging; the library itself only creates loggers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ._version import version
from .exceptions import ConfigurationError, DurableAdapterError

ENV_STORE_URL = "DURABLE_ADAPTER_STORE_URL"
ENV_HOST = "DURABLE_ADAPTER_HOST"
ENV_PORT = "DURABLE_ADAPTER_PORT"
ENV_WORKERS = "DURABLE_ADAPTER_WORKERS"

DEMO_STORE_URL = "sqlite+aiosqlite:///durable_adapter_demo.sqlite3"
DEMO_HOST = "127.0.0.1"
DEMO_PORT = 8000

logger = logging.getLogger(__name__)

_Subparsers = Any  # argparse._SubParsersAction, which is private


class CLIError(Exception):
    """A usage problem found after parsing; printed as ``error: ...``, exit status 1."""


# -- flags with environment twins ------------------------------------------------------


def _env_flag(parser: argparse.ArgumentParser, flag: str, env: str, *, help: str,
              default: Any = None, type: Callable[[str], Any] = str,
              metavar: str | None = None, required: bool = False) -> None:
    """Add ``flag``, defaulting to ``$env`` (then ``default``), both named in ``--help``."""
    raw = os.environ.get(env)
    value = default
    if raw is not None and raw != "":
        try:
            value = type(raw)
        except (TypeError, ValueError):
            parser.error(f"${env}: invalid value {raw!r}")
    shown = f"env {env}" + (f"; default {default}" if default is not None else "")
    parser.add_argument(flag, default=value, type=type, metavar=metavar,
                        required=required and value is None,
                        help=f"{help} ({shown})")


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")
    return port


def _workers(text: str) -> int:
    workers = int(text)
    if not 1 <= workers <= 64:
        raise ValueError(f"workers must be between 1 and 64: {workers}")
    return workers


def _safe_url(url: str) -> str:
    """``url`` with any password hidden, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL (mongodb://, redis://...): best effort
        scheme, sep, rest = url.partition("://")
        if sep and "@" in rest.split("/", 1)[0]:
            userinfo, _, host = rest.partition("@")
            return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"
        return url


# -- demo ------------------------------------------------------------------------------


def _add_demo(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the chat demo in a browser page",
        description="Serve a small chat page whose Socket.IO connections recover their "
                    "state after a drop. Demo only: it has no authentication.")
    _env_flag(parser, "--store", ENV_STORE_URL, default=DEMO_STORE_URL, metavar="URL",
              help="store URL")
    _env_flag(parser, "--host", ENV_HOST, default=DEMO_HOST, help="address to bind")
    _env_flag(parser, "--port", ENV_PORT, default=DEMO_PORT, type=_port,
              help="port to bind; 0 picks a free one")
    _env_flag(parser, "--workers", ENV_WORKERS, default=1, type=_workers,
              help="worker processes sharing the port and the store (websocket only "
                   "when more than one)")
    parser.add_argument("--flask", action="store_true",
                        help="serve the demo with Flask-SocketIO on the sync server "
                             "(durable_adapter.flask.SocketIO, Werkzeug's threaded server; "
                             "needs durable-adapter[flask])")
    parser.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo.app import run  # aiohttp and the page are only needed here

    def ready(url: str) -> None:
        print(f"durable-adapter demo running on {url} (store: {_safe_url(args.store)}); "
              "press Ctrl+C to stop", flush=True)

    if args.flask:
        if args.workers > 1:
            raise ConfigurationError("--flask serves one process: run several behind "
                                     "gunicorn (docs/sync.md) instead of --workers")
        from .demo.flask_app import run as run_flask

        run_flask(store=args.store, host=args.host, port=args.port, ready=ready)
        return 0
    if args.workers > 1:
        from .demo.app import run_workers

        return run_workers(store=args.store, host=args.host, port=args.port,
                           workers=args.workers, ready=ready)
    run(store=args.store, host=args.host, port=args.port, ready=ready)
    return 0


# -- migrate ---------------------------------------------------------------------------


def _add_migrate(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "migrate", help="create or upgrade a SQL store's tables",
        description="Bring the tables of the SQL store at --store to the current version. "
                    "Safe to run again, and from several processes at once.")
    _env_flag(parser, "--store", ENV_STORE_URL, metavar="URL", required=True,
              help="store URL, e.g. postgresql+asyncpg://user@host/db or "
                   "postgresql://user@host/db")
    parser.add_argument("--sql", action="store_true",
                        help="print the SQL that creates the tables from nothing, for the "
                             "URL's dialect, without connecting (for a DBA to apply)")
    parser.set_defaults(func=_run_migrate)


def _run_migrate(args: argparse.Namespace) -> int:
    import asyncio

    try:
        from . import migrate as migrations
    except ImportError as exc:
        raise CLIError(f"migrations are not available: {exc}") from exc
    if args.sql:
        if args.store.split("://", 1)[0].lower() in ("mongodb", "mongodb+srv"):
            raise CLIError("--sql is for SQL stores; MongoDB has no schema script")
        # stdout is the script; Alembic's progress lines would only be noise on stderr
        logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
        sys.stdout.write(migrations.upgrade_sql(args.store))
        return 0
    where = _safe_url(args.store)
    print(f"migrating the store at {where} ...", flush=True)

    async def run() -> None:
        try:
            await migrations.migrate(args.store)
        except BaseException:
            await _settle_driver_threads()
            raise

    asyncio.run(run())
    heads = getattr(migrations, "head_revisions", lambda: ())()
    at = f" (revision {', '.join(heads)})" if heads else ""
    print(f"the store at {where} is up to date{at}", flush=True)
    return 0


async def _settle_driver_threads(limit: float = 1.0) -> None:
    """Let aiosqlite's worker threads finish before the event loop closes.

    When opening the database fails, aiosqlite (0.22) stops its worker thread without
    waiting for it; the thread then posts to a closed loop and prints a traceback.
    """
    import asyncio
    import threading

    for _ in range(int(limit / 0.01)):
        if not any("_connection_worker_thread" in thread.name
                   for thread in threading.enumerate()):
            return
        await asyncio.sleep(0.01)


# -- check -----------------------------------------------------------------------------

ENV_SCHEMA = "DURABLE_ADAPTER_SCHEMA"
ENV_CHECK_TIMEOUT = "DURABLE_ADAPTER_CHECK_TIMEOUT"


def _add_check(subparsers: _Subparsers) -> None:
    from .readiness import STARTUP_WAIT

    parser = subparsers.add_parser(
        "check", help="check that a store answers and has the current tables",
        description="Open the store at --store as a server would, without migrating it "
                    "or creating a SQLite file, and print one line: exit "
                    "status 0 when a server could start on it, 1 otherwise. For "
                    "scripts, deploy steps and container healthchecks.")
    _env_flag(parser, "--store", ENV_STORE_URL, metavar="URL", required=True,
              help="store URL, e.g. postgresql://user@host/db")
    _env_flag(parser, "--schema", ENV_SCHEMA, metavar="NAME",
              help="PostgreSQL schema of the tables, if not the default")
    _env_flag(parser, "--timeout", ENV_CHECK_TIMEOUT, default=STARTUP_WAIT,
              type=_positive_float, metavar="SECONDS", help="seconds the check may take")
    parser.set_defaults(func=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    import asyncio

    from .readiness import PREFIX, check_store

    # reading the schema version is routine here: one line out, not Alembic's INFO
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)

    async def run() -> bool:
        answer = await check_store(args.store, schema=args.schema, wait=args.timeout)
        if not answer:
            await _settle_driver_threads()
            raise CLIError(answer.reason.removeprefix(PREFIX))
        return True

    asyncio.run(run())
    print(f"durable-adapter check: {_safe_url(args.store)}: ready", flush=True)
    return 0


# -- cleanup ---------------------------------------------------------------------------

ENV_CLEANUP_INTERVAL = "DURABLE_ADAPTER_CLEANUP_INTERVAL"
ENV_CLEANUP_ONCE = "DURABLE_ADAPTER_CLEANUP_ONCE"
ENV_RETENTION = "DURABLE_ADAPTER_RETENTION"
ENV_MAX_DISCONNECTION_DURATION = "DURABLE_ADAPTER_MAX_DISCONNECTION_DURATION"
ENV_BATCH_SIZE = "DURABLE_ADAPTER_BATCH_SIZE"
ENV_CLEANUP_VACUUM = "DURABLE_ADAPTER_CLEANUP_VACUUM"
ENV_METRICS_PORT = "DURABLE_ADAPTER_METRICS_PORT"
ENV_METRICS_HOST = "DURABLE_ADAPTER_METRICS_HOST"
METRICS_HOST = "0.0.0.0"  # Prometheus scrapes from another host; as prometheus-client


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be > 0: {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be >= 1: {text}")
    return value


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text}")


def _add_cleanup(subparsers: _Subparsers) -> None:
    from . import cleanup

    parser = subparsers.add_parser(
        "cleanup", help="delete expired sessions and packets no session can still need",
        description="Run the TTL cleanup worker beside the servers: every --interval "
                    "seconds it deletes expired sessions and packets older than "
                    "--retention, in small batches. One worker is active per database; "
                    "another one waits as standby. SIGTERM/SIGINT: finish the batch, exit 0.")
    _env_flag(parser, "--store", ENV_STORE_URL, metavar="URL", required=True,
              help="store URL, e.g. postgresql+asyncpg://user@host/db")
    _env_flag(parser, "--interval", ENV_CLEANUP_INTERVAL, default=cleanup.DEFAULT_INTERVAL,
              type=_positive_float, metavar="SECONDS", help="seconds between passes")
    once = os.environ.get(ENV_CLEANUP_ONCE, "")
    try:
        once_default = _boolean(once) if once else False
    except ValueError:
        parser.error(f"${ENV_CLEANUP_ONCE}: invalid value {once!r}")
    parser.add_argument("--once", action="store_true", default=once_default,
                        help=f"one pass, then exit (env {ENV_CLEANUP_ONCE}=1)")
    vacuum = os.environ.get(ENV_CLEANUP_VACUUM, "")
    try:
        vacuum_default = _boolean(vacuum) if vacuum else False
    except ValueError:
        parser.error(f"${ENV_CLEANUP_VACUUM}: invalid value {vacuum!r}")
    parser.add_argument("--vacuum", action="store_true", default=vacuum_default,
                        help="SQLite: after each pass, give the freed space back to the file "
                             "system (the first time rewrites the file once; see "
                             f"docs/operations.md) (env {ENV_CLEANUP_VACUUM}=1)")
    _env_flag(parser, "--retention", ENV_RETENTION, type=_positive_float, metavar="SECONDS",
              help="seconds packets are kept, at least --max-disconnection-duration; default "
                   f"that plus {cleanup.RETENTION_MARGIN:g}")
    _env_flag(parser, "--max-disconnection-duration", ENV_MAX_DISCONNECTION_DURATION,
              type=_positive_float, metavar="SECONDS",
              help="override the servers' max_disconnection_duration; by default the "
                   "largest one the live servers recorded in the store (SQL, Redis), else "
                   f"{cleanup.DEFAULT_MAX_DISCONNECTION_DURATION:g}")
    _env_flag(parser, "--batch-size", ENV_BATCH_SIZE, default=cleanup.DEFAULT_BATCH_SIZE,
              type=_positive_int, metavar="N", help="rows deleted per transaction")
    _env_flag(parser, "--metrics-port", ENV_METRICS_PORT, type=_port, metavar="N",
              help="serve Prometheus metrics on http://HOST:N/metrics (needs "
                   "durable-adapter[metrics]); 0 picks a free port")
    _env_flag(parser, "--metrics-host", ENV_METRICS_HOST, default=METRICS_HOST,
              metavar="HOST", help="address the metrics port binds")
    parser.set_defaults(func=_run_cleanup)


def _serve_metrics(host: str, port: int) -> None:
    from . import metrics

    if not metrics.available():
        raise CLIError("--metrics-port needs prometheus-client: "
                       "pip install 'durable-adapter[metrics]'")
    try:
        url, _ = metrics.serve_http(port, host)
    except OSError as exc:
        raise CLIError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    logger.info("metrics on %s", url, extra={"action": "metrics"})


def _run_cleanup(args: argparse.Namespace) -> int:
    import asyncio

    from . import cleanup
    from ._signals import on_stop

    if args.metrics_port is not None:
        _serve_metrics(args.metrics_host, args.metrics_port)

    async def run() -> None:
        stop = asyncio.Event()
        with on_stop(stop.set):
            try:
                await cleanup.run(args.store, interval=args.interval, once=args.once,
                                  retention=args.retention,
                                  max_disconnection_duration=args.max_disconnection_duration,
                                  batch_size=args.batch_size, stop_event=stop,
                                  vacuum=args.vacuum)
            except BaseException:
                await _settle_driver_threads()
                raise

    asyncio.run(run())
    return 0


# -- entry point -----------------------------------------------------------------------

#: Each adds one subcommand to the parser; the order is the order in ``--help``.
SUBCOMMANDS: list[Callable[[_Subparsers], None]] = [
    _add_demo,
    _add_migrate,
    _add_check,
    _add_cleanup,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="durable-adapter",
        description="Durable Socket.IO connection state recovery for python-socketio.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


#: loggers shown at INFO; everything else only from WARNING up
INFO_LOGGERS = ("durable_adapter", "alembic.runtime.migration")


def _configure_logging() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in INFO_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)
    _configure_logging()
    try:
        status: int = args.func(args)
    except (CLIError, DurableAdapterError) as exc:
        message = str(exc).removeprefix("durable_adapter: ")  # a StartupError's line
        print(f"durable-adapter {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
