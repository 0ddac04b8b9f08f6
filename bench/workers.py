"""Several worker processes on one machine sharing one SQLite file (issue 7).

With 1 and then 2 worker processes (bench/_node.py, ours, on one SQLite file, all on
one port through SO_REUSEPORT so the kernel spreads the clients over them; each worker
also has a private control port so the benchmark can emit on a chosen worker):

* fan-out: ``--clients`` (200) clients in one room, ``--events`` (200) events emitted on
  worker 0; deliveries/s until the last client got the last event (median of rounds);
  with 2 workers, worker 1's clients get them through the file (its follower polls
  ``PRAGMA data_version`` every ``poll_interval``).
* recovery: ``--rec-clients`` (100) clients drop, ``--missed`` (1000) events are emitted,
  all reconnect at once on the shared port, landing on either worker; p50/p95/max time
  until each has every missed event.
* latency: ``--pings`` single stamped events emitted on worker 0, spaced irregularly;
  time from the emit call to arrival at clients on worker 0 (same worker) and on
  worker 1 (other worker): the added latency of the poll interval (default 0.05 s).

Ratios: 2 workers against 1 worker, measured in the same run.

    python bench/workers.py
    python bench/workers.py --poll-interval 0.02
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import time
from typing import Any

from _common import (
    ClientProc,
    Node,
    StoreSpec,
    make_store,
    median,
    on_all,
    pct,
    ratio,
    scratch_dir,
    split,
    start_clients,
    start_node,
    table,
)

LIMIT = 90.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def fan_out(nodes: list[Node], procs: list[ClientProc], state: dict[str, int],
                  clients: int, events: int) -> tuple[float, float]:
    """(deliveries/s, CPU seconds of all workers per 10^4 deliveries)."""
    state["total"] += events
    await on_all(procs, cmd="arm", total=state["total"])
    cpu0 = sum([await n.cpu() for n in nodes])
    t0 = time.monotonic()
    await nodes[0].post("/emit", {"count": events, "room": "fan", "window": 100},
                        within=LIMIT)
    results = await on_all(procs, reply_within=LIMIT + 10, cmd="wait", within=LIMIT)
    done = [t for r in results for t in r["done"]]
    if any(t is None for t in done):
        raise RuntimeError("fan-out: not every client got every event")
    cpu = sum([await n.cpu() for n in nodes]) - cpu0
    deliveries = clients * events
    return deliveries / (max(done) - t0), cpu / deliveries * 1e4


async def recovery(nodes: list[Node], procs: list[ClientProc], url: str, missed: int
                   ) -> tuple[int, list[float]]:
    await on_all(procs, cmd="drop")
    await nodes[0].post("/emit", {"count": missed, "room": "rec", "window": 100},
                        within=LIMIT)
    answers = await on_all(procs, reply_within=LIMIT, cmd="reconnect", url=url, total=missed)
    results = await on_all(procs, reply_within=LIMIT + 10, cmd="wait", within=LIMIT)
    times = [d - s for r in results for d, s in zip(r["done"], r["started"], strict=True)
             if d is not None]
    return sum(a["recovered"] for a in answers), times


async def latency(nodes: list[Node], procs: list[ClientProc], state: dict[str, int],
                  pings: int) -> dict[str, list[float]]:
    await on_all(procs, cmd="latency")  # forget delays of earlier stamped events
    rng = random.Random(7)
    for _ in range(pings):
        await nodes[0].post("/emit", {"count": 1, "room": "fan", "stamp": True}, within=LIMIT)
        await asyncio.sleep(0.03 + rng.random() * 0.04)  # not in step with the polls
    state["total"] += pings
    await on_all(procs, cmd="arm", total=state["total"])
    await on_all(procs, reply_within=LIMIT, cmd="wait", within=10)
    delays: dict[str, list[float]] = {}
    for answer in await on_all(procs, cmd="latency"):
        for node, values in answer["delays"].items():
            delays.setdefault(node, []).extend(values)
    return delays


async def run(workers: int, spec: StoreSpec, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    nodes = [await start_node("ours", spec, name=f"w{i}", port=port, reuse_port=True,
                              poll_interval=args.poll_interval) for i in range(workers)]
    url = f"http://127.0.0.1:{port}"
    fan_procs = await start_clients(args.client_procs)
    rec_procs = await start_clients(args.client_procs)
    try:
        answers = await asyncio.gather(*(
            p.cmd(cmd="connect", url=url, n=n, room="fan", durable=True, where=True)
            for p, n in zip(fan_procs, split(args.clients, args.client_procs), strict=True)))
        spread: dict[str, int] = {}
        for answer in answers:
            for node, count in answer["nodes"].items():
                spread[node] = spread.get(node, 0) + count
        await asyncio.gather(*(
            p.cmd(cmd="connect", url=url, n=n, room="rec", durable=True, where=True)
            for p, n in zip(rec_procs, split(args.rec_clients, args.client_procs),
                            strict=True)))
        state = {"total": 0}
        await fan_out(nodes, fan_procs, state, args.clients, 10)  # warm-up
        rates, cpus = [], []
        for _ in range(args.rounds):
            rate, cpu = await fan_out(nodes, fan_procs, state, args.clients, args.events)
            rates.append(rate)
            cpus.append(cpu)
        delays = await latency(nodes, fan_procs, state, args.pings)
        recovered, times = await recovery(nodes, rec_procs, url, args.missed)
    finally:
        await asyncio.gather(*(n.stop() for n in nodes), *(p.stop() for p in fan_procs),
                             *(p.stop() for p in rec_procs), return_exceptions=True)
    return {"workers": workers, "spread": spread, "rate": median(rates), "rates": rates,
            "cpu": median(cpus), "recovered": recovered, "times": times, "delays": delays}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rec-clients", type=int, default=100)
    parser.add_argument("--missed", type=int, default=1000)
    parser.add_argument("--pings", type=int, default=60)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--poll-interval", type=float, default=None,
                        help="the SQLite store's poll_interval (default: the store's, 0.05)")
    args = parser.parse_args()

    results = []
    with scratch_dir() as tmp:
        for workers in (1, 2):
            spec = await make_store("sqlite", tmp, f"workers{workers}")
            assert isinstance(spec, StoreSpec)
            results.append(await run(workers, spec, args))

    one = results[0]
    poll = args.poll_interval or 0.05
    print(f"workers on one SQLite file: fan-out {args.clients} clients x {args.events} events "
          f"(median of {args.rounds}); recovery {args.rec_clients} clients x {args.missed} "
          f"missed; poll_interval {poll} s")
    print(table(
        ["workers", "clients per worker", "deliveries/s", "vs 1 worker", "CPU s/10^4",
         "recovered", "recovery p50 s", "p95 s", "max s", "max vs 1 worker"],
        [[r["workers"], " ".join(f"{k}:{v}" for k, v in sorted(r["spread"].items())),
          r["rate"], ratio(r["rate"], one["rate"]), r["cpu"],
          f"{r['recovered']}/{args.rec_clients}", pct(r["times"], 50), pct(r["times"], 95),
          max(r["times"], default=float("nan")),
          ratio(max(r["times"], default=float("nan")),
                max(one["times"], default=float("nan")))] for r in results]))
    print()
    print(f"latency of {args.pings} stamped events emitted on worker w0 "
          "(emit call to arrival, ms):")
    rows = []
    same = None
    for r in results:
        for node in sorted(r["delays"]):
            d = [x * 1000 for x in r["delays"][node]]
            where = "same worker" if node == "w0" else "other worker"
            if r["workers"] == 2 and node == "w0":
                same = d
            rows.append([f"{r['workers']} worker(s)", f"client on {node} ({where})", len(d),
                         pct(d, 50), pct(d, 95), max(d, default=float("nan"))])
    print(table(["run", "clients", "samples", "p50 ms", "p95 ms", "max ms"], rows))
    other = [x * 1000 for x in results[-1]["delays"].get("w1", [])]
    if same and other:
        print(f"added by crossing workers: p50 +{pct(other, 50) - pct(same, 50):.1f} ms, "
              f"p95 +{pct(other, 95) - pct(same, 95):.1f} ms "
              f"(poll_interval {poll * 1000:.0f} ms)")


if __name__ == "__main__":
    asyncio.run(main())
