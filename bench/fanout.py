"""Fan-out: N clients in one room, the server emits M events to the room.

Figure: deliveries per second = N x M / (time from the emit request until the last
client got the last event), for plain python-socketio without recovery (the baseline,
1.0x) and for our server on each store. Websocket only, compression off on both sides
(server ``http_compression=False``; clients do not offer permessage-deflate, checked).

The server runs in its own process; the clients in ``--client-procs`` other processes,
so the server is what is measured. The clients are by default a minimal Socket.IO
protocol client (bench/_clients.py ``RawMember``: parses every event, answers pings):
python-socketio's own client costs several times the server's CPU per event, and with
it (``--client sio``) the clients, not the server, set the figure. Rows are measured in
interleaved rounds (every row once per round) so a busy neighbour on the machine slows
all rows alike; the median round is shown. "CPU s/10^4" is the server process's CPU
seconds per 10^4 deliveries (lower is better; less sensitive than wall time to other
processes on the machine): when server CPU / wall time is near 1.0 the server's single
core is the limit, below it the clients or other processes competing for the cores are.

    python bench/fanout.py                      # 200 clients, 200 events, 3 rounds
    python bench/fanout.py --stores memory,postgres --events 500
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
from _common import (
    ClientProc,
    Node,
    StoreSpec,
    drop_store,
    make_store,
    median,
    on_all,
    ratio,
    scratch_dir,
    split,
    start_clients,
    start_node,
    table,
)

ROOM = "fanout"


@dataclass
class Row:
    label: str
    node: Node
    procs: list[ClientProc]
    spec: StoreSpec | None
    received: int = 0  # events each client got so far
    rates: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)  # server CPU s / wall s
    cpu_per: list[float] = field(default_factory=list)  # server CPU s per 10^4 deliveries
    emit_times: list[float] = field(default_factory=list)
    direct: list[float] = field(default_factory=list)  # share of frames written directly


async def setup_row(label: str, spec: StoreSpec | None, clients: int, nprocs: int,
                    client: str, node_args: Sequence[str] = ()) -> Row:
    node = await start_node("plain" if spec is None else "ours", spec, name=label,
                            extra_args=node_args)
    procs = await start_clients(nprocs)
    row = Row(label, node, procs, spec)
    answers = await asyncio.gather(*(
        proc.cmd(cmd="connect", url=node.url, n=n, room=ROOM, durable=spec is not None,
                 where=False, client=client)
        for proc, n in zip(procs, split(clients, nprocs), strict=True)))
    if any(a["compress"] for a in answers):
        raise RuntimeError("a websocket negotiated compression")
    return row


async def frame_counts(node: Node) -> dict[str, int]:
    """The node's direct/queued frame counters; none for a server without them (JS)."""
    try:
        counts: dict[str, int] = await node.get("/frames")
    except aiohttp.ClientResponseError as exc:
        if exc.status != 404:
            raise
        return {}
    return counts


async def measure(row: Row, clients: int, events: int, window: int, size: int,
                  limit: float) -> float:
    row.received += events
    await on_all(row.procs, cmd="arm", total=row.received)
    cpu0 = await row.node.cpu()
    frames0 = await frame_counts(row.node)
    t0 = time.monotonic()
    reply = await row.node.post("/emit", {"count": events, "room": ROOM, "window": window,
                                          "size": size}, within=limit)
    results = await on_all(row.procs, reply_within=limit + 10, cmd="wait",
                           within=limit)
    done = [t for r in results for t in r["done"]]
    cpu = await row.node.cpu() - cpu0
    frames = await frame_counts(row.node)
    sent = sum(frames.values()) - sum(frames0.values())
    row.direct.append((frames.get("direct", 0) - frames0.get("direct", 0)) / sent
                      if sent else 0.0)
    if any(t is None for t in done):
        counts = [c for r in results for c in r["counts"]]
        raise RuntimeError(f"{row.label}: not every client got {row.received} events "
                           f"(min {min(counts)}) within {limit} s")
    wall = max(done) - t0
    row.emit_times.append(reply["elapsed"])
    row.cpus.append(cpu / wall)
    row.cpu_per.append(cpu / (clients * events) * 1e4)
    rate = clients * events / wall
    row.rates.append(rate)
    return rate


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--events", type=int, default=200, help="events per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=int, default=100,
                        help="emits in flight at once on the server (default 100)")
    parser.add_argument("--size", type=int, default=100, help="payload padding, bytes")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--client", choices=("raw", "sio"), default="raw",
                        help="raw: a minimal protocol client (default; the server is the "
                             "limit); sio: python-socketio's AsyncClient (the clients are)")
    parser.add_argument("--stores", default="memory,sqlite,postgres,redis",
                        help="comma-separated: memory,sqlite,postgres,redis")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per round")
    parser.add_argument("--profile", default=None, metavar="PREFIX",
                        help="cProfile each server through the measured rounds, stats to "
                             "PREFIX.<row number> (read them with python -m pstats)")
    args = parser.parse_args()

    rows: list[Row] = []
    notes: list[str] = []
    with scratch_dir() as tmp:
        try:
            rows.append(await setup_row("python-socketio (no recovery)", None,
                                        args.clients, args.client_procs, args.client))
            for kind in args.stores.split(","):
                spec = await make_store(kind.strip(), tmp, "fanout")
                if isinstance(spec, str):
                    notes.append(f"{kind}: skipped, {spec}")
                    continue
                rows.append(await setup_row(f"ours, {spec.label}", spec, args.clients,
                                            args.client_procs, args.client))
            # warm-up: first emits open connections, prepare statements, fill caches
            for row in rows:
                await measure(row, args.clients, 10, args.window, args.size, args.timeout)
                row.rates.clear(), row.cpus.clear(), row.cpu_per.clear()
                row.emit_times.clear(), row.direct.clear()
            if args.profile:
                for i, row in enumerate(rows):
                    await row.node.post("/profile", {"path": f"{args.profile}.{i}"})
            for _ in range(args.rounds):
                for row in rows:
                    await measure(row, args.clients, args.events, args.window, args.size,
                                  args.timeout)
            if args.profile:
                for row in rows:
                    await row.node.post("/profile", {})
        finally:
            for row in rows:
                await asyncio.gather(row.node.stop(), *(p.stop() for p in row.procs),
                                     return_exceptions=True)
                if row.spec is not None:
                    await drop_store(row.spec)

    base = median(rows[0].rates)
    base_cpu = median(rows[0].cpu_per)
    print(f"fan-out: {args.clients} clients in one room, {args.events} events per round, "
          f"{args.rounds} rounds (median shown), {args.client_procs} client processes "
          f"({args.client} clients), "
          f"websocket, no compression, payload ~{args.size} B")
    print(table(
        ["server", "deliveries/s", "vs plain", "rounds (k/s)", "emit s", "server CPU/wall",
         "CPU s/10^4", "CPU vs plain", "direct frames"],
        [[r.label, median(r.rates), ratio(median(r.rates), base),
          " ".join(f"{x / 1000:.1f}" for x in r.rates), median(r.emit_times),
          median(r.cpus), median(r.cpu_per), ratio(median(r.cpu_per), base_cpu),
          f"{median(r.direct):.0%}"]
         for r in rows]))
    for note in notes:
        print("note:", note)


if __name__ == "__main__":
    asyncio.run(main())
