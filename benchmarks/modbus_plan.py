"""Read plans of realistic register maps: requests per cycle, registers read, poll-cycle time.

For every profile under ``config/profiles/``, a scattered 40-point map (the one of
``tests/drivers/modbus/test_request_count.py``) and a worst case of 100 points spread over
2000 registers, prints the planner's requests per cycle against one request per point and
the registers (bits) each reads, gap filling included.

Then the poll-cycle duration of both plans through the real driver on a socat pty line at the
9600 and 19200 baud settings, next to the wire time the same plan would take on a real RS-485
line. A pty emulates no baud rate (docs/protocols.md §3), so the measured figure is software,
pty and inter-frame pause only; the computed wire time is what the bytes themselves cost.
Without the RTU transport in the driver it measures over Modbus TCP and says so.

    .venv/bin/python benchmarks/modbus_plan.py [--cycles 10]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BAUDS = (9600, 19200)
# 8N1 = start + 8 data + stop = 10 bits a character (what the ptys carry); a line with parity
# (8E1, the Modbus default) or two stop bits has 11.
BITS_8N1 = 10
BITS_8E1 = 11
REQUEST_BYTES = 8  # unit, fc, address(2), count(2), CRC(2)
SILENCE_CHARS = 3.5  # inter-frame silence, once before the request and once before the answer


@dataclass(frozen=True)
class Map:
    """A named register map: a device table without transport keys."""

    name: str
    table: dict[str, Any]


def answer_bytes(table: str, count: int) -> int:
    """Bytes of an RTU read answer: unit, fc, byte count, data, CRC(2)."""
    data = 2 * count if table in ("holding", "input") else math.ceil(count / 8)
    return 5 + data


def wire_seconds(requests: list[tuple[str, int]], baud: int, bits_per_char: int) -> float:
    """Wire time of a plan's (table, count) requests at ``baud``, device turnaround excluded."""
    chars = sum(REQUEST_BYTES + answer_bytes(t, c) + 2 * SILENCE_CHARS for t, c in requests)
    return chars * bits_per_char / baud


def maps() -> list[Map]:
    from agent.profiles import available_profiles, load_profile
    from tests.drivers.modbus.servers import SCATTERED_LIMITS, scattered_points

    found: list[Map] = []
    for name in available_profiles():
        profile = load_profile(name)
        if profile.driver != "modbus":
            continue
        found.append(Map(f"profile {name}", {"profile": name, "_profile": profile}))
    found.append(Map("scattered 40 points", {**SCATTERED_LIMITS, "points": scattered_points()}))
    rng = random.Random(20_000)
    addresses = sorted(rng.sample(range(2000), 100))
    worst = [{"name": f"p{i}", "address": a, "table": "holding"} for i, a in enumerate(addresses)]
    for gap in (0, 16):
        found.append(Map(f"worst case 100/2000, max_gap {gap}", {"max_gap": gap, "points": worst}))
    return found


def config_for(m: Map, transport: dict[str, Any], *, per_point: bool = False) -> Any:
    """The validated ModbusDeviceConfig of a map (per_point: one request per point)."""
    from agent.profiles import apply_profile
    from drivers.modbus.config import ModbusDeviceConfig

    table = {k: v for k, v in m.table.items() if k not in ("profile", "_profile")}
    device: dict[str, Any] = {"name": "bench", "timeout": "1 s", "retries": 0, **transport}
    merged = (
        apply_profile(device, m.table["_profile"]) if "_profile" in m.table else {**device, **table}
    )
    if per_point:
        # A point whose own span is forbidden is read alone: this turns the planner into
        # one request per point through the real driver.
        merged = {**merged, "forbidden_ranges": [(0, 65535)]}
    return ModbusDeviceConfig.model_validate(merged)


def plan_of(config: Any) -> list[tuple[str, int]]:
    from drivers.modbus.planner import plan_reads

    plan = plan_reads(
        config.points,
        max_registers=config.max_registers_per_request,
        max_bits=config.max_bits_per_request,
        max_gap=config.max_gap,
        forbidden=config.forbidden_ranges,
    )
    return [(r.table.value, r.count) for r in plan]


def print_plan_table(all_maps: list[Map]) -> None:
    print("Read plans (device limits from the profile / map)")
    head = (
        f"{'map':<38} {'points':>6} {'req plan':>8} {'req/pt':>6} {'saved':>6} "
        f"{'read plan':>9} {'read/pt':>7} {'gap fill':>8}"
    )
    print(head)
    print("-" * len(head))
    for m in all_maps:
        config = config_for(m, {"endpoint": "tcp://127.0.0.1:502"})
        plan = plan_of(config)
        per_point = sum(p.width for p in config.points)
        read = sum(c for _, c in plan)
        n = len(config.points)
        print(
            f"{m.name:<38} {n:>6} {len(plan):>8} {n:>6} {1 - len(plan) / n:>6.0%} "
            f"{read:>9} {per_point:>7} {read - per_point:>8}"
        )
    print(
        "req plan = requests per cycle of the planner; req/pt = one request per point; "
        "read = registers (bits for coil/discrete) read per cycle; gap fill = read plan - read/pt"
    )
    print()


async def measure(
    config: Any, image: Any, cycles: int, *, rtu: bool, baud: int, workdir: Path
) -> tuple[float, int, int]:
    """Median seconds per read() over ``cycles``; requests the server saw per cycle; bad values."""
    from agent.config import BusConfig
    from agent.driver import DriverContext
    from agent.readings import Quality
    from drivers.modbus.driver import SPEC
    from tests.conftest import free_port
    from tests.drivers.modbus.servers import CountingServer, SocatLine

    line: SocatLine | None = None
    if rtu:
        line = SocatLine(workdir)
        server = await CountingServer.start_serial(image, line.server_end, baudrate=baud)
        inter_frame_ms = SILENCE_CHARS * BITS_8N1 / baud * 1000
        bus = BusConfig.model_validate(
            {
                "name": "bench-line",
                "port": line.client_end,
                "baudrate": baud,
                "timeout": "1 s",
                "inter_frame_ms": inter_frame_ms,
            }
        )
        context = DriverContext(buses={"bench-line": bus})
    else:
        port = free_port()
        server = await CountingServer.start_tcp(image, port)
        config = config.model_copy(update={"endpoint": f"tcp://127.0.0.1:{port}"})
        context = DriverContext()
    driver = SPEC.create(config, context)
    try:
        await driver.connect()
        await driver.read()  # warm-up: connection, first exchange
        server.take()
        durations: list[float] = []
        bad = 0
        for _ in range(cycles):
            started = time.perf_counter()
            values = await driver.read()
            durations.append(time.perf_counter() - started)
            bad += sum(1 for v in values if v.quality is not Quality.GOOD)
        per_cycle = len(server.take()) // cycles
        return statistics.median(durations), per_cycle, bad
    finally:
        await driver.close()
        await context.close()
        await server.stop()
        if line is not None:
            line.close()


async def print_timing_table(all_maps: list[Map], cycles: int) -> None:
    from tests.drivers.modbus.servers import image_for, rtu_unavailable_reason

    reason = rtu_unavailable_reason()
    rtu = reason is None
    if rtu:
        print(
            "Poll-cycle duration, Modbus RTU through the driver on a socat pty pair "
            f"(median of {cycles} cycles)"
        )
        print(
            "  measured = real driver + pymodbus RTU server over a pty; ptys emulate NO baud "
            "rate, so it is software time plus the inter-frame pause (inter_frame_ms = 3.5 "
            "characters at the baud setting)"
        )
    else:
        print(f"Poll-cycle duration MEASURED OVER MODBUS TCP, NOT RTU ({reason})")
        print(f"  (median of {cycles} cycles; the baud setting does not apply to TCP)")
    print(
        "  wire = computed time of the same requests on a real line: request 8 bytes + answer "
        "5 + 2 x count bytes (bits: ceil(count/8)) + 2 x 3.5 characters of silence; "
        f"8N1 = {BITS_8N1} bits/char, 8E1 = {BITS_8E1} bits/char; device turnaround not included"
    )
    for baud in BAUDS:
        print()
        print(f"baud setting {baud}")
        head = (
            f"{'map':<38} {'plan':<9} {'req':>4} {'seen':>4} {'measured ms':>11} "
            f"{'wire 8N1 ms':>11} {'wire 8E1 ms':>11} {'bad':>4}"
        )
        print(head)
        print("-" * len(head))
        for m in all_maps:
            transport: dict[str, Any] = (
                {"bus": "bench-line", "unit": 1}
                if rtu
                else {"endpoint": "tcp://127.0.0.1:502", "unit": 1}
            )
            planned = config_for(m, transport)
            image = image_for(planned.points, forbidden=planned.forbidden_ranges)
            for label, config in (
                ("planner", planned),
                ("per point", config_for(m, transport, per_point=True)),
            ):
                requests = plan_of(config)
                with tempfile.TemporaryDirectory(prefix="ssc-bench-") as tmp:
                    seconds, seen, bad = await measure(
                        config, image, cycles, rtu=rtu, baud=baud, workdir=Path(tmp)
                    )
                print(
                    f"{m.name:<38} {label:<9} {len(requests):>4} {seen:>4} "
                    f"{seconds * 1000:>11.1f} "
                    f"{wire_seconds(requests, baud, BITS_8N1) * 1000:>11.1f} "
                    f"{wire_seconds(requests, baud, BITS_8E1) * 1000:>11.1f} {bad:>4}"
                )
    print()
    print(
        "req = requests in the plan; seen = requests the server counted per cycle; "
        "bad = values not GOOD over all measured cycles (0 expected)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10, help="measured cycles per setting")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # tests.drivers.modbus.servers: the shared test servers
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    all_maps = maps()
    print_plan_table(all_maps)
    asyncio.run(print_timing_table(all_maps, args.cycles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
