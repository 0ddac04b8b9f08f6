"""What Prometheus metrics cost in fan-out: one server process measured with metrics on
and off, in alternating rounds.

The fan-out of bench/fanout.py (N clients in one room, the server emits M events to it,
websocket, no compression, the raw protocol clients). Per store kind one server process
and one set of clients; before each round the server is told to count every metric or
nothing (``POST /metrics-state``, bench/_node.py), and during each "on" round
``/metrics`` is scraped once (far more often than Prometheus would). The order flips
every round, so drift and busy neighbours hit both states alike; the same process and
clients serve both, so their placement on the machine is no difference either.

Target: metrics on keeps at least 95 % of the fan-out throughput of metrics off. Two
figures: deliveries/s (median of the rounds; on a shared machine it moves by tens of
percent from round to round, ``--compare off,off`` shows how much) and the server's CPU
seconds per delivery, which neighbours disturb far less: its inverse is the throughput
of a saturated server, so off/on CPU per delivery is the capacity ratio the verdict uses.

    python bench/metrics_cost.py                  # memory and SQLite, 21 rounds of 400
    python bench/metrics_cost.py --stores memory,postgres --rounds 9
    python bench/metrics_cost.py --compare off,off  # A/A: the noise of this machine
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass, field

import aiohttp
from _common import drop_store, make_store, median, scratch_dir, table
from fanout import Row, measure, setup_row

TARGET = 0.95  # metrics on / metrics off, deliveries per second


@dataclass
class State:
    """The rounds of one store measured in one metrics state."""

    name: str
    rates: list[float] = field(default_factory=list)
    cpu_per: list[float] = field(default_factory=list)


async def scrape(row: Row) -> int:
    async with aiohttp.ClientSession() as http, http.get(
            row.node.control_url + "/metrics", timeout=aiohttp.ClientTimeout(total=30)) as r:
        r.raise_for_status()
        return len(await r.read())


async def measure_in(row: Row, state: State, args: argparse.Namespace) -> None:
    on = state.name.startswith("on")
    answer = await row.node.post("/metrics-state", {"on": on})
    assert answer["on"] is on
    scraping = asyncio.create_task(scrape(row)) if on else None
    await measure(row, args.clients, args.events, args.window, args.size, args.timeout)
    if scraping is not None:
        await scraping
    state.rates.append(row.rates.pop())
    state.cpu_per.append(row.cpu_per.pop())


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--events", type=int, default=400, help="events per round")
    parser.add_argument("--rounds", type=int, default=21, help="rounds per state")
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--size", type=int, default=100, help="payload padding, bytes")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--stores", default="memory,sqlite",
                        help="comma-separated: memory,sqlite,postgres,redis")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per round")
    parser.add_argument("--compare", default="off,on",
                        help="the two states compared (default off,on; off,off shows the "
                             "noise of the machine)")
    args = parser.parse_args()
    names = args.compare.split(",")
    if len(names) != 2 or not set(names) <= {"off", "on"}:
        parser.error("--compare takes two of off/on, e.g. off,on")
    if names[0] == names[1]:
        names[1] += " (again)"

    measured: list[tuple[Row, State, State]] = []
    notes: list[str] = []
    with scratch_dir() as tmp:
        try:
            for kind in args.stores.split(","):
                spec = await make_store(kind.strip(), tmp, "metrics")
                if isinstance(spec, str):
                    notes.append(f"{kind}: skipped, {spec}")
                    continue
                row = await setup_row(spec.label, spec, args.clients, args.client_procs,
                                      "raw", node_args=["--metrics", "on"])
                measured.append((row, State(names[0]), State(names[1])))
            for row, *_ in measured:  # warm-up
                await measure(row, args.clients, 10, args.window, args.size, args.timeout)
            for n in range(args.rounds):
                for row, first, second in measured:
                    for state in ((first, second) if n % 2 == 0 else (second, first)):
                        await measure_in(row, state, args)
        finally:
            for row, *_ in measured:
                await asyncio.gather(row.node.stop(), *(p.stop() for p in row.procs),
                                     return_exceptions=True)
                if row.spec is not None:
                    await drop_store(row.spec)

    print(f"metrics cost in fan-out: {args.clients} clients in one room, {args.events} "
          f"events per round, {args.rounds} rounds per state alternating in one server "
          f"process (median shown), {args.client_procs} client processes, websocket, "
          f"payload ~{args.size} B")
    print(table(
        ["store, metrics", "deliveries/s", "rounds (k/s)", "CPU s/10^4"],
        [[f"{row.label}, {state.name}", median(state.rates),
          " ".join(f"{x / 1000:.1f}" for x in state.rates), median(state.cpu_per)]
         for row, *states in measured for state in states]))
    for row, base, other in measured:
        rate = median(other.rates) / median(base.rates)
        paired = median([a / b for a, b in zip(other.rates, base.rates, strict=True)])
        capacity = median(base.cpu_per) / median(other.cpu_per)
        verdict = "within" if capacity >= TARGET else "OVER"
        print(f"{row.label}: {other.name} / {base.name}: capacity (1 / CPU per delivery) "
              f"{capacity:.3f}x, {verdict} the 5 % budget; deliveries/s {rate:.3f}x "
              f"(median of per-round-pair ratios {paired:.3f}x)")
    for note in notes:
        print("note:", note)


if __name__ == "__main__":
    asyncio.run(main())
