"""Reconnect storm (and recovery of a backlog), ours against JS socket.io and stock
python-socketio, measured in one run.

Storm: ``--clients`` clients (raw protocol clients, bench/_clients.py, in
``--client-procs`` processes) join a room, get one event live (so each holds an offset),
drop their transports abruptly, the server emits ``--missed`` events to the room, and
every client reconnects with its pid and offset, the reconnects spread evenly over
``--spread`` seconds. Per server and round:

* all recovered at: ms from the first reconnect until the last client has everything;
* connect p50 / p95: ms from a client's reconnect until its CONNECT reply (for stock
  python-socketio a plain connect: it recovers nothing, and is the baseline);
* recovered: clients that got their session back (and exactly the missed events);
* CPU per connect: the server process's CPU (user + system) from just before the
  reconnects until the last client had everything, divided by the clients (ms);
  ``loop`` the event loop thread's part.

Recovery (``--rec-clients`` x ``--rec-missed``, with ``--recovery``): the same with
every client reconnecting at once; the p95 of each client's reconnect-to-last-event
time.

Each server gets a fresh process (and store) per round; rounds alternate servers, and
the table shows medians. ``--profile PREFIX`` cProfiles our servers' event loop thread
from just before the reconnects until everything arrived (``PREFIX.<server>.<round>``,
read with ``python -m pstats``); CPU figures of a profiled round are not comparable.

    python bench/storm.py                                   # js,plain,memory,postgres x 3
    python bench/storm.py --servers postgres --rounds 1 --profile /tmp/storm
    python bench/storm.py --recovery --servers js,memory,postgres
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

from _common import (
    ClientProc,
    Node,
    StoreSpec,
    drop_store,
    make_store,
    median,
    on_all,
    pct,
    scratch_dir,
    split,
    start_clients,
    start_node,
    table,
)

LIMIT = 120.0  # seconds any phase may take
SERVERS = {  # key: (label, node kind, store kind or None)
    "js": ("JS socket.io 4.8, memory", "js", None),
    "plain": ("python-socketio (no recovery)", "plain", None),
    "memory": ("ours, memory", "ours", "memory"),
    "sqlite": ("ours, SQLite", "ours", "sqlite"),
    "postgres": ("ours, PostgreSQL", "ours", "postgres"),
    "redis": ("ours, Redis", "ours", "redis"),
}


async def connect(node: Node, nprocs: int, clients: int, room: str) -> list[ClientProc]:
    procs = await start_clients(nprocs)
    try:
        answers = await asyncio.gather(*(
            proc.cmd(reply_within=LIMIT, cmd="connect", url=node.url, n=n, room=room,
                     durable=True, where=False, client="raw")
            for proc, n in zip(procs, split(clients, nprocs), strict=True)))
    except BaseException:
        await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)
        raise
    if any(a["compress"] for a in answers):
        raise RuntimeError("a websocket negotiated compression")
    return procs


async def storm_once(node: Node, procs: list[ClientProc], room: str, missed: int,
                     spread: float, profile: str | None, stage_times: bool = False
                     ) -> dict[str, Any]:
    await on_all(procs, reply_within=LIMIT, cmd="arm", total=1)
    await node.post("/emit", {"count": 1, "room": room, "window": 100}, within=LIMIT)
    await on_all(procs, reply_within=LIMIT + 10, cmd="wait", within=LIMIT)
    await on_all(procs, reply_within=LIMIT, cmd="drop")
    await node.post("/emit", {"count": missed, "room": room, "window": 100}, within=LIMIT)
    if node.name != "js":  # the server has closed every dropped connection
        deadline = time.monotonic() + LIMIT
        # polled: the server has no event to wait on from here
        while (await node.post("/settle", {}))["sockets"] and (  # noqa: ASYNC110
                time.monotonic() < deadline):
            await asyncio.sleep(0.05)
    if profile:
        await node.post("/profile", {"path": profile})
    if stage_times:
        await node.get("/stages")  # cleared: only the reconnects count
    cpu, loop = await node.cpus()
    answers = await on_all(procs, reply_within=LIMIT, cmd="reconnect", url=node.url,
                           total=missed, spread=spread)
    recovered = sum(a["recovered"] for a in answers)
    results = await on_all(procs, reply_within=LIMIT + 10, cmd="wait", within=LIMIT)
    cpu_after, loop_after = await node.cpus()
    if profile:
        await node.post("/profile", {"path": None})
    stages = await node.get("/stages") if stage_times else {}
    starts = [s for r in results for s in r["started"]]
    connected = [c for r in results for c in r["connected"]]
    done = [d for r in results for d in r["done"]]
    counts = [c for r in results for c in r["counts"]]
    if any(c != missed for c in counts):
        raise RuntimeError(f"recovered clients got {min(counts)}..{max(counts)} events, "
                           f"expected {missed} each")
    if any(d is None for d in done):
        raise RuntimeError("a recovered client did not get everything in time")
    # refused clients are left out of the waits' lists: their connect times come from
    # the reconnect answers' lists of every client
    all_connects = [c for a in answers for c in a.get("connect_ms", [])]
    return {
        "recovered": recovered,
        "whole": (max(done) - min(starts)) * 1000 if done else float("nan"),
        "each_p95": pct([d - s for d, s in zip(done, starts, strict=True)], 95) * 1000
        if done else float("nan"),
        "connect_p50": pct(all_connects, 50),
        "connect_p95": pct(all_connects, 95),
        "connect_max": max(all_connects, default=float("nan")),
        "cpu_ms": (cpu_after - cpu) * 1000,
        "loop_ms": (loop_after - loop) * 1000,
        "connected": len(connected),
        "stages": stages,
    }


async def run_round(key: str, tmp: Path, args: argparse.Namespace, round_no: int
                    ) -> dict[str, Any] | str:
    _, kind, store_kind = SERVERS[key]
    spec: StoreSpec | None = None
    if store_kind is not None:
        made = await make_store(store_kind, tmp, f"storm{key}")
        if isinstance(made, str):
            return made
        spec = made
    out: dict[str, Any] = {}
    try:
        env = {**os.environ, "BENCH_NODE_STAGES": "1"} if args.stages else None
        # the Python servers listen with Node.js's backlog, as the JS server does
        node = await start_node(kind, spec, name=key, env=env,
                                extra_args=() if kind == "js" else
                                ("--backlog", str(args.backlog)))
        try:
            profile = (f"{args.profile}.{key}.{round_no}"
                       if args.profile and kind != "js" else None)
            procs = await connect(node, args.client_procs, args.clients, "storm")
            try:
                out.update(await storm_once(node, procs, "storm", args.missed,
                                            args.spread, profile,
                                            args.stages and kind != "js"))
            finally:
                await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)
            if args.recovery:
                procs = await connect(node, 2, args.rec_clients, "rec")
                try:
                    rec = await storm_once(node, procs, "rec", args.rec_missed, 0.0, None)
                    out["rec_p95"] = rec["each_p95"]
                    out["rec_recovered"] = rec["recovered"]
                finally:
                    await asyncio.gather(*(p.stop() for p in procs),
                                         return_exceptions=True)
        finally:
            await node.stop()
    finally:
        if spec is not None:
            await drop_store(spec)
    return out


def cell(rounds: list[dict[str, Any]], key: str) -> float:
    return median([r[key] for r in rounds if key in r])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="js,plain,memory,postgres",
                        help="comma-separated: " + ",".join(SERVERS))
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--missed", type=int, default=10)
    parser.add_argument("--spread", type=float, default=1.0, help="seconds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client-procs", type=int, default=4)
    parser.add_argument("--recovery", action="store_true",
                        help="also: --rec-clients x --rec-missed reconnecting at once")
    parser.add_argument("--rec-clients", type=int, default=100)
    parser.add_argument("--rec-missed", type=int, default=1000)
    parser.add_argument("--backlog", type=int, default=511,
                        help="the Python servers' listen backlog (Node.js's default: 511)")
    parser.add_argument("--profile", default=None, metavar="PREFIX")
    parser.add_argument("--stages", action="store_true",
                        help="print our servers' wall time per stage of the connect path")
    args = parser.parse_args()
    keys = [k.strip() for k in args.servers.split(",")]
    for key in keys:
        if key not in SERVERS:
            parser.error(f"unknown server {key!r}")
    if not (1 <= args.clients <= 5000 and 1 <= args.rounds <= 10):
        parser.error("--clients 1..5000, --rounds 1..10")

    started, load = time.monotonic(), os.getloadavg()
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
    notes: list[str] = []
    with scratch_dir() as tmp:
        for round_no in range(args.rounds):
            order = keys if round_no % 2 == 0 else keys[::-1]
            for key in order:
                outcome = await run_round(key, tmp, args, round_no)
                if isinstance(outcome, str):
                    notes.append(f"{SERVERS[key][0]}: skipped, {outcome}")
                    continue
                results[key].append(outcome)
                stages = outcome.pop("stages", None) or {}
                print(f"  round {round_no + 1} {key}: " + ", ".join(
                    f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in outcome.items()), flush=True)
                for name, figures in stages.items():
                    print(f"    {name:40} calls {figures['calls']:5}  mean "
                          f"{figures['mean_ms']:8.2f} ms  p95 {figures['p95_ms']:8.2f} ms  "
                          f"total {figures['total_ms']:8.1f} ms")

    print(f"storm: {args.clients} clients reconnect within {args.spread:g} s "
          f"({args.missed} missed each), {args.client_procs} client processes (raw), "
          f"{args.rounds} rounds alternating (median shown); "
          f"{time.monotonic() - started:.0f} s; load average {load[0]:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end ({os.cpu_count()} cores)")
    js, plain = results.get("js", []), results.get("plain", [])
    rows = []
    for key in keys:
        rounds = results[key]
        if not rounds:
            continue
        whole = cell(rounds, "whole")
        p95 = cell(rounds, "connect_p95")
        rows.append([
            SERVERS[key][0],
            f"{min(r['recovered'] for r in rounds)}/{args.clients}",
            whole if SERVERS[key][1] != "plain" else float("nan"),
            f"{whole / cell(js, 'whole'):.2f}x" if js and SERVERS[key][1] == "ours"
            else "-",
            cell(rounds, "connect_p50"), p95,
            f"{p95 / cell(plain, 'connect_p95'):.2f}x" if plain else "-",
            cell(rounds, "cpu_ms") / args.clients, cell(rounds, "loop_ms") / args.clients,
        ])
    print(table(["server", "recovered", "all recovered at ms", "vs JS", "connect p50 ms",
                 "p95 ms", "p95 vs py-sio", "CPU ms/connect", "loop ms/connect"], rows))
    if args.recovery:
        rec_rows = []
        for key in keys:
            rounds = [r for r in results[key] if "rec_p95" in r]
            if not rounds or SERVERS[key][1] == "plain":
                continue
            p95 = cell(rounds, "rec_p95")
            rec_rows.append([SERVERS[key][0],
                             f"{min(r['rec_recovered'] for r in rounds)}/{args.rec_clients}",
                             p95, f"{p95 / cell(js, 'rec_p95'):.2f}x" if js else "-"])
        print(f"recovery: {args.rec_clients} clients x {args.rec_missed} missed, "
              "reconnecting at once")
        print(table(["server", "recovered", "p95 ms", "vs JS"], rec_rows))
    for note in notes:
        print(note)


if __name__ == "__main__":
    asyncio.run(main())
