"""What writing sessions through costs: server CPU with write-through on and off.

Issue 11 writes each live socket's session to the store from its connect on, and again
after every room enter/leave and ``save_session`` (committed before the caller's await
returns; the changes made while one write is in flight share the next ``save_sessions``
transaction). This script measures
what that costs the server process, against the same server writing only at drops
(``connection_state_recovery={"write_through": False}``, the behaviour before).

Per store one server process (bench/_node.py), switched between the two states between
rounds (``POST /write-through``, only while no client is connected; the two states
alternate and the order flips every round, so neighbours on the machine and drift hit
both alike). Each round, with raw protocol clients (bench/_clients.py) spread over
``--client-procs`` processes:

1. **connect storm**: ``--clients`` clients connect (``--at-once`` per client process at
   a time) and get their CONNECT reply; each joins room ``storm`` in the connect handler.
   Also timed: wall-clock from the first connect to the last CONNECT reply.
2. **room churn**: every client, concurrently, makes the server enter and leave a room
   (``join i`` / ``leave i`` events, acknowledged), ``--pairs`` times.
3. **save_session churn**: every client calls ``save`` ``--saves`` times; the handler
   calls ``save_session`` with a small dict.
4. **disconnect**: every client leaves on purpose (write-through on deletes the session
   written at connect; off has nothing to delete).

After each phase the server is asked to settle (``POST /settle``: the session writer has
written everything marked so far) before its CPU seconds (``GET /cpu``, user + system)
are read, so the writes a phase caused are counted in that phase; the event loop
thread's share is shown too (the rest is driver threads: aiosqlite runs SQLite in one).
Figures: the median over ``--rounds`` of each phase's server CPU seconds, on / off; the
target (issue 11) is at most 1.3x for the connect storm and the room churn.

    python bench/write_through.py                # SQLite, PostgreSQL, Redis (memory: none
                                                 # is written through; --stores memory
                                                 # shows the bench's own noise)
    python bench/write_through.py --quick        # 300 clients, SQLite and PostgreSQL
    python bench/write_through.py --stores sqlite --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from dataclasses import dataclass, field
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
    scratch_dir,
    split,
    start_clients,
    start_node,
    table,
)

TARGET = 1.3  # write-through on / off, server CPU seconds
PHASES = ("connect storm", "room churn", "save_session", "disconnect")
JUDGED = ("connect storm", "room churn")
MODES = ("off", "on")
SETTLE_WITHIN = 120.0  # seconds for every socket to be gone after a disconnect phase


@dataclass
class Target:
    """One store's server process and what its rounds measured."""

    label: str
    spec: StoreSpec
    node: Node
    cpu: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    loop_cpu: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    storm_wall: dict[str, list[float]] = field(default_factory=dict)
    #: (mode, phase) -> save_sessions transactions, sessions written, delete calls
    writes: dict[tuple[str, str], list[tuple[int, int, int]]] = field(default_factory=dict)


async def settle(node: Node) -> dict[str, Any]:
    answer: dict[str, Any] = await node.post("/settle", {})
    return answer


async def settle_empty(node: Node) -> dict[str, Any]:
    """Settle once every Engine.IO socket is gone (the clients' closes are processed)."""
    deadline = time.monotonic() + SETTLE_WITHIN
    while True:
        answer = await settle(node)
        if answer["sockets"] == 0:
            return answer
        if time.monotonic() > deadline:
            raise RuntimeError(f"{answer['sockets']} sockets still open on {node.name}")
        await asyncio.sleep(0.05)  # polling the server: a condition, not a delay


def _counts(before: dict[str, Any], after: dict[str, Any]) -> tuple[int, int, int]:
    return (after["save_calls"] - before["save_calls"], after["saved"] - before["saved"],
            after["delete_calls"] - before["delete_calls"])


async def one_round(target: Target, mode: str, procs: list[ClientProc],
                    args: argparse.Namespace, record: bool = True,
                    profile: str | None = None) -> None:
    node = target.node
    answer = await node.post("/write-through", {"on": mode == "on"})
    assert answer["on"] is (mode == "on")
    marks = [await settle_empty(node)]
    cpus = [await node.cpus()]
    started = time.monotonic()
    answers = await asyncio.gather(*(
        proc.cmd(cmd="connect", url=node.url, n=n, room="storm", durable=True,
                 where=False, at_once=args.at_once, reply_within=300)
        for proc, n in zip(procs, split(args.clients, len(procs)), strict=True)))
    wall = time.monotonic() - started
    if any(a["compress"] for a in answers):
        raise RuntimeError("a websocket negotiated compression")
    marks.append(await settle(node))
    cpus.append(await node.cpus())
    if profile:
        await node.post("/profile", {"path": profile})
    await on_all(procs, reply_within=600, cmd="calls", events=["join", "leave"],
                 repeat=args.pairs)
    marks.append(await settle(node))
    if profile:
        await node.post("/profile", {"path": None})
    cpus.append(await node.cpus())
    await on_all(procs, reply_within=600, cmd="calls", events=["save"], repeat=args.saves)
    marks.append(await settle(node))
    cpus.append(await node.cpus())
    await on_all(procs, reply_within=120, cmd="disconnect")
    marks.append(await settle_empty(node))
    cpus.append(await node.cpus())
    if not record:
        return
    target.storm_wall.setdefault(mode, []).append(wall)
    for n, phase in enumerate(PHASES):
        target.cpu.setdefault((mode, phase), []).append(cpus[n + 1][0] - cpus[n][0])
        target.loop_cpu.setdefault((mode, phase), []).append(cpus[n + 1][1] - cpus[n][1])
        target.writes.setdefault((mode, phase), []).append(_counts(marks[n], marks[n + 1]))


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "-"


def report(targets: list[Target], args: argparse.Namespace, elapsed: float,
           loads: tuple[str, str], notes: list[str]) -> None:
    print(f"write-through cost: {args.clients} clients (connect storm, {args.at_once} "
          f"connects in flight per client process), {args.pairs} room enter/leave pairs "
          f"and {args.saves} save_session each; {args.rounds} rounds per state alternating "
          f"in one server process per store (median shown), {args.client_procs} client "
          f"processes (raw clients, websocket); {elapsed:.0f} s; load average "
          f"{loads[0]} at the start, {loads[1]} at the end ({os.cpu_count()} cores)")
    rows = []
    for target in targets:
        for phase in PHASES:
            off, on = target.cpu[("off", phase)], target.cpu[("on", phase)]
            paired = [b / a for a, b in zip(off, on, strict=True) if a]
            writes = target.writes[("on", phase)]
            calls = median([w[0] for w in writes])
            saved = median([w[1] for w in writes])
            deletes = median([w[2] for w in writes])
            loop_off = median(target.loop_cpu[("off", phase)])
            loop_on = median(target.loop_cpu[("on", phase)])
            rows.append([target.label, phase, median(off), median(on),
                         f"{median(on) / median(off):.2f}x", loop_off, loop_on,
                         " ".join(f"{r:.2f}" for r in paired),
                         f"{calls:,.0f} / {saved:,.0f} / {deletes:,.0f}"])
    print(table(["store", "phase", "CPU s off", "CPU s on", "on / off",
                 "loop thread s off", "loop thread s on",
                 "per round on/off", "on: save txns / sessions / deletes"], rows))
    print()
    print(table(["store", "storm wall s off", "storm wall s on", "on / off"],
                [[t.label, median(t.storm_wall["off"]), median(t.storm_wall["on"]),
                  f"{median(t.storm_wall['on']) / median(t.storm_wall['off']):.2f}x"]
                 for t in targets]))
    for target in targets:
        for phase in JUDGED:
            value = median(target.cpu[("on", phase)]) / median(target.cpu[("off", phase)])
            verdict = "met" if value <= TARGET else "MISSED"
            print(f"{target.label} {phase}: server CPU on / off {value:.2f}x "
                  f"(target <= {TARGET}x: {verdict})")
    for note in notes:
        print("note:", note)


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", default="sqlite,postgres,redis",
                        help="comma-separated: sqlite,postgres,redis,memory")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=10,
                        help="room enter/leave pairs per client")
    parser.add_argument("--saves", type=int, default=10, help="save_session per client")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per state")
    parser.add_argument("--client-procs", type=int, default=4)
    parser.add_argument("--at-once", type=int, default=50,
                        help="connects in flight per client process during the storm")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="after the measured rounds, one more round per state with the "
                             "room churn phase under cProfile: DIR/<store>-<state>.prof")
    parser.add_argument("--quick", action="store_true",
                        help="300 clients, 5 pairs, 5 saves, SQLite and PostgreSQL")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.pairs, args.saves = 300, 5, 5
        if args.stores == parser.get_default("stores"):
            args.stores = "sqlite,postgres"
    if args.profile:
        args.profile = Path(args.profile).resolve()  # the server runs in another cwd
        args.profile.mkdir(parents=True, exist_ok=True)
    return args


async def main() -> None:
    args = options()

    started, load_start = time.monotonic(), load_average()
    targets: list[Target] = []
    notes: list[str] = []
    procs: list[ClientProc] = []
    with scratch_dir() as tmp:
        try:
            for kind in args.stores.split(","):
                spec = await make_store(kind.strip(), tmp, "wt")
                if isinstance(spec, str):
                    notes.append(f"{kind}: skipped, {spec}")
                    continue
                node = await start_node("ours", spec, name=spec.label)
                targets.append(Target(spec.label, spec, node))
            procs = await start_clients(args.client_procs)
            warm = argparse.Namespace(**{**vars(args), "clients": min(args.clients, 100),
                                         "pairs": 1, "saves": 1})
            for target in targets:  # imports, statement caches, pools: in neither state
                for mode in MODES:
                    await one_round(target, mode, procs, warm, record=False)
            for n in range(args.rounds):
                for target in targets:
                    for mode in (MODES if n % 2 == 0 else MODES[::-1]):
                        await one_round(target, mode, procs, args)
            if args.profile:
                for target in targets:
                    for mode in MODES:
                        path = str(args.profile / f"{target.spec.url.split(':')[0]}-{mode}.prof")
                        await one_round(target, mode, procs, args, record=False,
                                        profile=path)
        finally:
            await asyncio.gather(*(p.stop() for p in procs),
                                 *(t.node.stop() for t in targets), return_exceptions=True)
            for target in targets:
                await drop_store(target.spec)
    report(targets, args, time.monotonic() - started, (load_start, load_average()), notes)


if __name__ == "__main__":
    asyncio.run(main())
