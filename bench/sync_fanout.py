"""Fan-out on the sync server: N clients in one room, one handler emits M events to it.

``durable_adapter.Server`` (threads, its store on a loop thread of its own) beside
python-socketio's sync ``socketio.Server`` without recovery (the baseline, 1.0x), both
``async_mode='threading'`` behind Werkzeug's threaded server, measured in the same run.
Figure: deliveries per second = N x M / (time from the emit request until the last
client got the last event). The emits go one after the other from one request's thread,
as one handler's would. Rows are measured in interleaved rounds (the median shown);
clients are bench/_clients.py's minimal protocol clients in their own processes.

    python bench/sync_fanout.py                   # 100 clients, 200 events, 3 rounds
    python bench/sync_fanout.py --stores memory,sqlite,postgres --events 500
"""

from __future__ import annotations

import argparse
import asyncio

from _common import (
    StoreSpec,
    drop_store,
    make_store,
    median,
    ratio,
    scratch_dir,
    split,
    start_clients,
    start_node,
    table,
)
from fanout import ROOM, Row, measure


async def setup_row(label: str, spec: StoreSpec | None, clients: int, nprocs: int) -> Row:
    node = await start_node("sync-plain" if spec is None else "sync-ours", spec, name=label)
    procs = await start_clients(nprocs)
    row = Row(label, node, procs, spec)
    answers = await asyncio.gather(*(
        proc.cmd(cmd="connect", url=node.url, n=n, room=ROOM, durable=spec is not None,
                 where=False, client="raw")
        for proc, n in zip(procs, split(clients, nprocs), strict=True)))
    if any(a["compress"] for a in answers):
        raise RuntimeError("a websocket negotiated compression")
    return row


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--events", type=int, default=200, help="events per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=100, help="payload padding, bytes")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--stores", default="memory,sqlite,postgres",
                        help="comma-separated: memory,sqlite,postgres,redis")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per round")
    parser.add_argument("--profile", default=None, metavar="PREFIX",
                        help="cProfile each server's emitting thread and loop thread during "
                             "the measured rounds: PREFIX.<row>.emit, PREFIX.<row>.loop")
    args = parser.parse_args()

    rows: list[Row] = []
    notes: list[str] = []
    with scratch_dir() as tmp:
        try:
            rows.append(await setup_row("python-socketio sync (no recovery)", None,
                                        args.clients, args.client_procs))
            for kind in args.stores.split(","):
                spec = await make_store(kind.strip(), tmp, "syncfan")
                if isinstance(spec, str):
                    notes.append(f"{kind}: skipped, {spec}")
                    continue
                rows.append(await setup_row(f"ours sync, {spec.label}", spec, args.clients,
                                            args.client_procs))
            for row in rows:  # warm-up: connections, statements, caches
                await measure(row, args.clients, 10, 1, args.size, args.timeout)
                row.rates.clear(), row.cpus.clear(), row.cpu_per.clear()
                row.emit_times.clear()
            if args.profile:
                for i, row in enumerate(rows):
                    await row.node.post("/profile", {"path": f"{args.profile}.{i}"})
            for _ in range(args.rounds):
                for row in rows:
                    await measure(row, args.clients, args.events, 1, args.size,
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
    print(f"sync fan-out: {args.clients} clients in one room, {args.events} events per "
          f"round from one handler, {args.rounds} rounds (median shown), "
          f"{args.client_procs} client processes, websocket, no compression, "
          f"payload ~{args.size} B")
    print(table(
        ["server", "deliveries/s", "vs plain sync", "rounds (k/s)", "emit s",
         "server CPU/wall", "CPU s/10^4", "CPU vs plain"],
        [[r.label, median(r.rates), ratio(median(r.rates), base),
          " ".join(f"{x / 1000:.1f}" for x in r.rates), median(r.emit_times),
          median(r.cpus), median(r.cpu_per), ratio(median(r.cpu_per), base_cpu)]
         for r in rows]))
    for note in notes:
        print("note:", note)


if __name__ == "__main__":
    asyncio.run(main())
