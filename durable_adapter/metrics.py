"""Prometheus metrics of recoveries, the store and the cleanup worker (extra ``metrics``).

``pip install 'durable-adapter[metrics]'`` brings prometheus-client; the first server,
store or cleanup worker that counts something then registers every metric below on
prometheus-client's global registry (importing durable_adapter imports nothing of
prometheus-client). Without prometheus-client every hook returns at once;
``DURABLE_ADAPTER_METRICS=off`` in the environment leaves them off too.

Several worker processes (gunicorn ``-w 4``): with ``PROMETHEUS_MULTIPROC_DIR`` set
before the workers start, counters and histograms go to prometheus-client's per-process
files, the gauges become multiprocess gauges (sockets summed over live workers, lag the
largest of them), and the exposition below sums every worker's files: any worker's
``/metrics`` shows the whole (docs/operations.md, "Metrics with several workers").

To use another registry, or to stop counting, call once at start-up, before the servers
start (a switch starts the counters again from zero)::

    from prometheus_client import CollectorRegistry
    from durable_adapter import metrics

    registry = CollectorRegistry()
    metrics.enable(registry=registry)     # or metrics.disable()

Exposition: :func:`aiohttp_handler` (``app.router.add_get("/metrics", ...)``),
:func:`asgi_app` (``durable_adapter.ASGIApp(sio, other_asgi_app=metrics.asgi_app())`` serves
``/metrics`` beside ``/socket.io/``) and :func:`serve_http` (a thread, for processes
without a web server: ``durable-adapter cleanup --metrics-port N``).

The rest of the package calls the one-line hooks below (``recovery_started``, ...); only
this module knows prometheus-client. Nothing is counted per delivered packet: a fan-out
to n sockets costs the same with metrics on.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from aiohttp import web

logger = logging.getLogger(__name__)

PREFIX = "durable_adapter_"
ENV_SWITCH = "DURABLE_ADAPTER_METRICS"  # "off" (or 0, false, no): not enabled by default
LAG_INTERVAL = 5.0  # seconds between two follower lag probes of a server
MAX_NAMESPACE_LABELS = 100  # distinct namespace label values; more become OTHER_NAMESPACE
OTHER_NAMESPACE = "_other"

RECOVERED_PACKETS_BUCKETS = (0, 1, 5, 10, 50, 100, 500, 1_000, 5_000, 10_000, 50_000, 100_000)
RECOVERY_SECONDS_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
APPEND_SECONDS_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000)

#: a monotonic clock for the hooks' start times; cheap enough to read when disabled
clock = time.perf_counter

#: when the CONNECT being handled in this task arrived (0: not a recovery attempt)
_connect_started: contextvars.ContextVar[float] = contextvars.ContextVar(
    "durable_adapter_connect_started", default=0.0)


# -- what the hooks read of the rest of the package ----------------------------------------
# The stores call these hooks, so this module stands below them and below the servers: it
# names what it reads of their objects here instead of importing their classes.


class _Bounds(Protocol):  # a store's HistoryBounds
    @property
    def top(self) -> int: ...

    @property
    def purged_through(self) -> int: ...


class _Dated(Protocol):  # a StoredPacket
    @property
    def created_at(self) -> float: ...


class _History(Protocol):  # a Store
    async def bounds(self) -> _Bounds: ...

    async def read(self, *, after: int, limit: int) -> Sequence[_Dated]: ...


class _Purged(Protocol):  # a store's PurgeResult
    @property
    def sessions(self) -> int: ...

    @property
    def packets(self) -> int: ...


class _Watched(Protocol):  # a server's DurableManager
    @property
    def rooms(self) -> Mapping[str, Mapping[str | None, Any]]: ...

    @property
    def store(self) -> _History: ...

    @property
    def delivered(self) -> int: ...


class _Metrics:
    """Every metric object, registered on one registry."""

    def __init__(self, pc: Any, registry: Any, lag_interval: float) -> None:
        self.registry = registry
        self.lag_interval = lag_interval
        # prometheus-client chose its value class at its import: files per process or not
        self.multiprocess: bool = pc.values.ValueClass is not pc.values.MutexValue
        self.namespaces: set[str] = set()
        self.recoveries = pc.Counter(
            PREFIX + "recoveries", "Reconnects that asked to recover, by outcome "
            "(recovered or refused) and refusal reason (empty when recovered).",
            ["namespace", "outcome", "reason"], registry=None)
        self.recovered_packets = pc.Histogram(
            PREFIX + "recovered_packets", "Packets replayed from the store per recovery.",
            buckets=RECOVERED_PACKETS_BUCKETS, registry=None)
        self.recovery_seconds = pc.Histogram(
            PREFIX + "recovery_seconds", "Seconds from a recovering CONNECT received to "
            "the last replayed packet sent.", buckets=RECOVERY_SECONDS_BUCKETS, registry=None)
        self.append_seconds = pc.Histogram(
            PREFIX + "append_seconds", "Seconds from an emit queued for the store to its "
            "packet committed.", buckets=APPEND_SECONDS_BUCKETS, registry=None)
        self.append_batch_packets = pc.Histogram(
            PREFIX + "append_batch_packets", "Packets written per store transaction.",
            buckets=BATCH_SIZE_BUCKETS, registry=None)
        self.store_errors = pc.Counter(
            PREFIX + "store_errors", "Failed store operations, by operation.",
            ["operation"], registry=None)
        self.sessions_saved = pc.Counter(
            PREFIX + "sessions_saved", "Sessions saved for a later recovery (a socket "
            "dropped, or the server shut down).", registry=None)
        self.sessions_claimed = pc.Counter(
            PREFIX + "sessions_claimed", "Stored sessions claimed by a reconnect.",
            registry=None)
        self.cleanup_removed = pc.Counter(
            PREFIX + "cleanup_removed", "Rows the cleanup worker deleted, by kind "
            "(sessions or packets).", ["kind"], registry=None)
        # set by a cleanup pass; until then absent (not 0): a server or a standby
        # worker must not look like a worker that never succeeded
        self.cleanup_last_success: float | None = None
        self.retained_packets: int | None = None
        self.collectors: list[Any] = [
            self.recoveries, self.recovered_packets, self.recovery_seconds,
            self.append_seconds, self.append_batch_packets, self.store_errors,
            self.sessions_saved, self.sessions_claimed, self.cleanup_removed]
        # a collector read at scrape time sees this process only: with several processes
        # the gauges are written to prometheus-client's files instead (not registered:
        # the exposition reads those files, see _exposed)
        self.shared_gauges = _SharedGauges(pc) if self.multiprocess else None
        if self.shared_gauges is None:
            self.collectors.append(_LiveCollector(self))
        for collector in self.collectors:
            registry.register(collector)

    def unregister(self) -> None:
        for collector in self.collectors:
            with contextlib.suppress(KeyError):
                self.registry.unregister(collector)

    def namespace_label(self, namespace: str) -> str:
        """Clients pick namespaces: bound the label values they can create."""
        if namespace in self.namespaces:
            return namespace
        if len(self.namespaces) >= MAX_NAMESPACE_LABELS:
            return OTHER_NAMESPACE
        self.namespaces.add(namespace)
        return namespace


#: servers whose sockets and follower lag are reported (weak: a dropped server leaves)
_watched: weakref.WeakSet[_Watched] = weakref.WeakSet()
#: the latest probe of each watched server: (packets behind, seconds behind)
_lags: MutableMapping[_Watched, tuple[int, float]] = weakref.WeakKeyDictionary()
_probes: MutableMapping[_Watched, asyncio.Task[None]] = weakref.WeakKeyDictionary()


class _LiveCollector:
    """Values read when scraped: live sockets, the lag the probes last measured, and
    what the last cleanup pass left.

    A scrape may run in another thread (:func:`serve_http`, :func:`aiohttp_handler`):
    only atomic reads (``len``, ``list`` of a dict) touch the servers' state.
    """

    def __init__(self, owner: _Metrics) -> None:
        self._owner = owner

    def describe(self) -> list[Any]:
        return list(self._families())

    def collect(self) -> Iterator[Any]:
        sockets, lag_packets, lag_seconds, last_success, retained = self._families()
        for label, count in sorted(_socket_counts().items()):
            sockets.add_metric([label], count)
        lag = _largest_lag()
        if lag is not None:
            lag_packets.add_metric([], lag[0])
            lag_seconds.add_metric([], lag[1])
        if self._owner.cleanup_last_success is not None:
            last_success.add_metric([], self._owner.cleanup_last_success)
        if self._owner.retained_packets is not None:
            retained.add_metric([], self._owner.retained_packets)
        yield from (sockets, lag_packets, lag_seconds, last_success, retained)

    @staticmethod
    def _families() -> tuple[Any, Any, Any, Any, Any]:
        from prometheus_client.core import GaugeMetricFamily

        return (
            GaugeMetricFamily(PREFIX + "sockets", "Connected sockets per namespace.",
                              labels=["namespace"]),
            GaugeMetricFamily(PREFIX + "follower_lag_packets", "Packets committed to the "
                              "store that this node has not delivered yet (at the last "
                              "probe; the largest of this process's servers)."),
            GaugeMetricFamily(PREFIX + "follower_lag_seconds", "Age of the oldest packet "
                              "this node has not delivered yet; 0 when caught up (at the "
                              "last probe; the largest of this process's servers)."),
            GaugeMetricFamily(PREFIX + "cleanup_last_success_timestamp_seconds", "Unix "
                              "time of the cleanup worker's last successful pass (absent "
                              "before the first one)."),
            GaugeMetricFamily(PREFIX + "retained_packets", "Packets in the store's history "
                              "after the cleanup worker's last pass (top seq minus purge "
                              "mark)."),
        )


#: (multiprocess mode) gauge -> how prometheus-client combines the processes' values;
#: "live" modes forget a worker once ``multiprocess.mark_process_dead(pid)`` ran for it
SHARED_GAUGE_MODES = {
    "sockets": "livesum",  # every live worker's sockets
    "follower_lag_packets": "livemax",  # the worst live worker
    "follower_lag_seconds": "livemax",
    "cleanup_last_success_timestamp_seconds": "max",  # kept after the worker exits
    "retained_packets": "mostrecent",
}


class _SharedGauges:
    """The gauges of :class:`_LiveCollector` as prometheus-client multiprocess gauges.

    Written, not read at scrape time: a worker's lag probe writes its sockets and lag
    every ``lag_interval`` seconds, a cleanup pass writes what it left. A gauge without
    labels is created at its first value, so it stays absent until then, as in one
    process.
    """

    def __init__(self, pc: Any) -> None:
        self._pc = pc
        self._gauges: dict[str, Any] = {}
        self._namespaces: set[str] = set()  # sockets labels this process has written

    def _gauge(self, name: str, labels: Sequence[str] = ()) -> Any:
        gauge = self._gauges.get(name)
        if gauge is None:
            doc = next(f for f in _LiveCollector._families() if f.name == PREFIX + name)
            gauge = self._gauges[name] = self._pc.Gauge(
                PREFIX + name, doc.documentation, labels, registry=None,
                multiprocess_mode=SHARED_GAUGE_MODES[name])
        return gauge

    def write_servers(self) -> None:
        counts = _socket_counts()
        sockets = self._gauge("sockets", ["namespace"])
        for label in self._namespaces - counts.keys():  # gone from this process: 0
            sockets.labels(label).set(0)
        for label, count in counts.items():
            sockets.labels(label).set(count)
        self._namespaces |= counts.keys()
        lag = _largest_lag()
        if lag is not None or "follower_lag_packets" in self._gauges:
            packets, seconds = lag if lag is not None else (0, 0.0)
            self._gauge("follower_lag_packets").set(packets)
            self._gauge("follower_lag_seconds").set(seconds)

    def write_cleanup(self, owner: _Metrics) -> None:
        if owner.retained_packets is not None:
            self._gauge("retained_packets").set(owner.retained_packets)
        if owner.cleanup_last_success is not None:
            self._gauge("cleanup_last_success_timestamp_seconds").set(
                owner.cleanup_last_success)


def _socket_counts() -> dict[str, int]:
    """Connected sockets per namespace label, over this process's servers."""
    counts: dict[str, int] = {}
    for manager in list(_watched):
        for namespace, rooms in list(manager.rooms.items()):
            label = _label(namespace)
            counts[label] = counts.get(label, 0) + len(rooms.get(None, ()))
    return counts


def _largest_lag() -> tuple[int, float] | None:
    """(packets, seconds) behind, the largest of this process's probed servers."""
    lags = list(_lags.values())
    if not lags:
        return None
    return max(packets for packets, _ in lags), max(seconds for _, seconds in lags)


_active: _Metrics | None = None
#: enable() or disable() ran, or the default was applied (at the first hook, not import)
_settled = False
_settling = threading.Lock()


def _current() -> _Metrics | None:
    """The metrics counted on, applying the default at the first call."""
    if not _settled:
        _apply_default()
    return _active


def _apply_default() -> None:
    """On unless prometheus-client is missing or the environment switches them off."""
    global _settled
    with _settling:
        if _settled:
            return
        switched_off = os.environ.get(ENV_SWITCH, "").strip().lower() in (
            "0", "off", "false", "no")
        if not switched_off and _prometheus() is not None:
            enable()
        _settled = True


def _label(namespace: str) -> str:
    active = _active
    return active.namespace_label(namespace) if active is not None else namespace


def _prometheus() -> Any:
    """prometheus-client, imported now; None when it is not installed."""
    try:
        import prometheus_client
    except ImportError:
        return None
    return prometheus_client


def _require() -> Any:
    pc = _prometheus()
    if pc is None:
        raise ConfigurationError("metrics need prometheus-client: "
                                 "pip install 'durable-adapter[metrics]'")
    return pc


# -- configuration ------------------------------------------------------------------


def available() -> bool:
    """True when prometheus-client is installed."""
    return _prometheus() is not None


def enabled() -> bool:
    """True while metrics are counted."""
    return _current() is not None


def enable(registry: Any = None, *, lag_interval: float = LAG_INTERVAL) -> Any:
    """Count on ``registry`` (default: prometheus-client's global one); returns it.

    Replaces the default registration (made when the first metric is counted) or an
    earlier call's: the metrics move to ``registry`` and start from zero.
    ``lag_interval``: seconds between two follower lag probes of a server started
    afterwards.
    """
    global _active, _settled
    pc = _require()
    if not lag_interval > 0:
        raise ConfigurationError(f"lag_interval must be > 0 seconds, got {lag_interval!r}")
    target = pc.REGISTRY if registry is None else registry
    disable()
    _active = _Metrics(pc, target, lag_interval)
    _settled = True
    return target


def disable() -> None:
    """Stop counting and unregister the metrics (probes already running stop at once)."""
    global _active, _settled
    _settled = True
    if _active is not None:
        _active.unregister()
        _active = None


def current_registry() -> Any:
    """The registry metrics are counted on; raises when they are off."""
    active = _current()
    if active is None:
        _require()
        raise ConfigurationError("metrics are disabled (durable_adapter.metrics.enable())")
    return active.registry


# -- hooks: one line each at their call sites --------------------------------------------


def recovery_started() -> None:
    """A CONNECT carrying a pid arrived (the recovery clock starts)."""
    if _current() is not None:
        _connect_started.set(clock())


def recovery_refused(namespace: str, failure: Enum | None) -> None:
    """The attempt prepared for this CONNECT; counts it if it was refused (``failure``, a
    :class:`~durable_adapter.RecoveryFailure`, names why)."""
    active = _current()
    if active is None or failure is None:
        return
    reason = failure.name.lower()
    active.recoveries.labels(active.namespace_label(namespace), "refused", reason).inc()
    if reason == "store_unavailable":
        active.store_errors.labels("restore").inc()


def recovered(namespace: str, packets: int) -> None:
    """The replay of a recovered socket has been sent."""
    active = _current()
    if active is None:
        return
    active.recoveries.labels(active.namespace_label(namespace), "recovered", "").inc()
    active.recovered_packets.observe(packets)
    started = _connect_started.get()
    if started:
        active.recovery_seconds.observe(clock() - started)


def session_saved() -> None:
    if (active := _current()) is not None:
        active.sessions_saved.inc()


def session_claimed(session: object | None) -> None:
    if session is not None and (active := _current()) is not None:
        active.sessions_claimed.inc()


def append_committed(queued: float) -> None:
    """An emit's packet committed; ``queued`` is :data:`clock` when it was queued."""
    if (active := _current()) is not None:
        active.append_seconds.observe(clock() - queued)


def append_batch(size: int) -> None:
    """One store transaction wrote ``size`` packets."""
    if (active := _current()) is not None:
        active.append_batch_packets.observe(size)


def store_error(operation: str) -> None:
    """A store operation failed: ``append``, ``follow``, ``save_session``, ``purge``,
    ``restore`` (claiming or reading a replay) or ``lag_probe``."""
    if (active := _current()) is not None:
        active.store_errors.labels(operation).inc()


def watch(manager: _Watched) -> None:
    """A server started: report its sockets, and probe its follower lag."""
    _watched.add(manager)
    active = _current()
    probe = _probes.get(manager)
    if active is not None and (probe is None or probe.done()):  # done: metrics were off
        _probes[manager] = asyncio.create_task(
            _probe_lag(manager, active.lag_interval), name="durable_adapter lag probe")


async def unwatch(manager: _Watched) -> None:
    """The server stops: stop its probe and forget it."""
    _watched.discard(manager)
    _lags.pop(manager, None)
    probe = _probes.pop(manager, None)
    if probe is not None:
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe
    _write_shared_gauges()


async def cleanup_pass(store: _History, result: _Purged) -> None:
    """The cleanup worker finished a pass with ``result``."""
    active = _current()
    if active is None:
        return
    finished = time.time()
    active.cleanup_removed.labels("sessions").inc(result.sessions)
    active.cleanup_removed.labels("packets").inc(result.packets)
    try:
        bounds = await store.bounds()
    except Exception:  # the pass succeeded; only the size is unknown this time
        active.store_errors.labels("purge").inc()
    else:
        active.retained_packets = max(0, bounds.top - bounds.purged_through)
    # last: a scrape that sees this pass's time sees its size too
    active.cleanup_last_success = finished
    if active.shared_gauges is not None:
        active.shared_gauges.write_cleanup(active)


async def _probe_lag(manager: _Watched, interval: float) -> None:
    """Every ``interval`` s: how far the store's top is ahead of what was delivered."""
    while _active is not None:
        try:
            bounds = await manager.store.bounds()
            delivered = manager.delivered
            behind = max(0, bounds.top - delivered)
            seconds = 0.0
            if behind:
                oldest = await manager.store.read(after=delivered, limit=1)
                if oldest:
                    seconds = max(0.0, time.time() - oldest[0].created_at)
            if manager in _watched:
                _lags[manager] = (behind, seconds)
        except Exception as exc:  # a store outage shows here too; the probe goes on
            logger.debug("follower lag probe failed: %s", exc)
            store_error("lag_probe")
        _write_shared_gauges()
        await asyncio.sleep(interval)


def _write_shared_gauges() -> None:
    """(multiprocess mode) this process's sockets and lag, to prometheus-client's files."""
    active = _active
    if active is not None and active.shared_gauges is not None:
        active.shared_gauges.write_servers()


# -- exposition -------------------------------------------------------------------------


def render(accept: str = "", registry: Any = None) -> tuple[bytes, str]:
    """The exposition of ``registry`` (default: the one counted on; in multiprocess mode,
    every process's files) and its content type, in the format ``accept`` asks for
    (Prometheus text or OpenMetrics)."""
    _require()
    from prometheus_client.exposition import choose_encoder

    encode, content_type = choose_encoder(accept)
    return encode(_exposed(registry)), content_type


def _exposed(registry: Any) -> Any:
    """What an exposition shows: ``registry`` if given; in multiprocess mode a registry
    reading every process's files (as prometheus-client's docs set one up); else the
    registry counted on."""
    if registry is not None:
        return registry
    active = _current()
    if active is not None and active.multiprocess:
        from prometheus_client import CollectorRegistry, multiprocess

        combined = CollectorRegistry()
        read_files: Any = multiprocess.MultiProcessCollector  # untyped
        read_files(combined)
        return combined
    return current_registry()


async def _render_off_loop(accept: str, registry: Any) -> tuple[bytes, str]:
    # the text is built in a thread: a large registry must not hold up the event loop
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, render, accept, registry)


def aiohttp_handler(registry: Any = None) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler serving the exposition::

        app.router.add_get("/metrics", durable_adapter.metrics.aiohttp_handler())
    """
    _require()
    from aiohttp import web

    async def metrics_handler(request: web.Request) -> web.Response:
        body, content_type = await _render_off_loop(request.headers.get("Accept", ""),
                                                    registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    return metrics_handler


ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[Any]],
                    Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]


def asgi_app(registry: Any = None, *, path: str = "/metrics",
             other_asgi_app: ASGIApp | None = None) -> ASGIApp:
    """An ASGI app serving the exposition at ``path``; other requests go to
    ``other_asgi_app`` (else 404). Beside python-socketio::

        app = durable_adapter.ASGIApp(sio, other_asgi_app=durable_adapter.metrics.asgi_app())
    """
    _require()

    async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                  send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] == "http" and scope.get("path") == path:
            accept = dict(scope.get("headers") or []).get(b"accept", b"").decode("latin-1")
            body, content_type = await _render_off_loop(accept, registry)
            await _asgi_reply(send, 200, body, content_type)
        elif other_asgi_app is not None:
            await other_asgi_app(scope, receive, send)
        elif scope["type"] == "http":
            await _asgi_reply(send, 404, b"not found\n", "text/plain; charset=utf-8")
        elif scope["type"] == "lifespan":
            await _asgi_lifespan(receive, send)

    return app


async def _asgi_reply(send: Callable[[dict[str, Any]], Awaitable[None]], status: int,
                      body: bytes, content_type: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode("latin-1")),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _asgi_lifespan(receive: Callable[[], Awaitable[Any]],
                         send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def serve_http(port: int, host: str = "0.0.0.0", registry: Any = None) -> tuple[str, Any]:
    """Serve the exposition on ``host:port`` from a daemon thread; returns its URL and
    the server (``server.shutdown()`` stops it). Port 0 picks a free one."""
    pc = _require()
    server, _ = pc.start_http_server(port, addr=host, registry=_exposed(registry))
    bound = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{bound}/metrics", server
