"""vehicle.swarm: pure functions and a short run against a real protocol server."""

from __future__ import annotations

import asyncio
import io
import random

import pytest
from rich.console import Console

from common.errors import BrokerUnreachable, ConfigError
from common.geo import haversine_km, parse_center, random_position
from tests.support.procs import free_port
from tests.support.vehicle_server import ProtocolServer, run_with_server
from vehicle.swarm import SwarmConfig, percentiles, run_swarm


def test_parse_center() -> None:
    assert parse_center("-12.97,-38.5") == (-12.97, -38.5)
    for bad in ("", "1", "1,2,3", "a,b", "91,0", "0,181", "nan,0"):
        with pytest.raises(ConfigError):
            parse_center(bad)


def test_random_positions_stay_inside_the_radius() -> None:
    rng = random.Random(7)
    center = (-12.97, -38.5)
    for _ in range(500):
        lat, lon = random_position(rng, center, 10.0)
        assert haversine_km(center[0], center[1], lat, lon) <= 10.05


def test_percentiles_nearest_rank_in_ms() -> None:
    samples = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert percentiles(samples) == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
    assert percentiles([]) == {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}


def test_closed_loop_swarm_counts_requests_and_refusals() -> None:
    async def body(server: ProtocolServer) -> None:
        cfg = SwarmConfig("127.0.0.1", server.port, count=5, duration=0.6, pipeline=2, seed=1)
        out = Console(file=io.StringIO(), width=200)
        result = await run_swarm(cfg, out, progress_every=0.2)
        assert result.connected == 5 and result.requests > 50
        assert result.throughput > 0 and result.latency_ms["p50"] > 0
        assert result.latency_ms["p50"] <= result.latency_ms["p99"] <= result.latency_ms["max"]
        assert result.by_type["bateria"] > result.by_type.get("chegada", 0)
        assert not result.errors
        # (ignored below) the console writes to a StringIO here (typed as IO[str])
        assert "rps=" in out.file.getvalue()  # type: ignore[attr-defined]
        assert server.connections == 5

    run_with_server(body)


def test_fixed_rate_swarm_holds_the_rate() -> None:
    async def body(server: ProtocolServer) -> None:
        cfg = SwarmConfig("127.0.0.1", server.port, count=4, duration=1.0, rate=200, mix="ping")
        result = await run_swarm(cfg)
        assert 150 <= result.requests <= 210
        assert result.by_type == {"ping": result.requests}

    run_with_server(body)


def test_swarm_without_broker_is_unreachable() -> None:
    cfg = SwarmConfig("127.0.0.1", free_port(), count=3, duration=0.2)
    with pytest.raises(BrokerUnreachable):
        asyncio.run(run_swarm(cfg))


def test_stop_event_ends_the_run_early_with_figures() -> None:
    async def body(server: ProtocolServer) -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, stop.set)
        cfg = SwarmConfig("127.0.0.1", server.port, count=3, duration=30, mix="ping")
        began = asyncio.get_running_loop().time()
        result = await run_swarm(cfg, stop=stop)
        assert asyncio.get_running_loop().time() - began < 2
        assert result.requests > 10 and result.elapsed_s < 2

    run_with_server(body)
