"""common.runner: a program's loop until its work ends or SIGINT/SIGTERM (real signals)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from common import runner


def _signal_soon(sig: int) -> None:
    """Deliver ``sig`` to this process once the loop runs (the handler runs in the loop)."""
    asyncio.get_running_loop().call_soon(os.kill, os.getpid(), sig)


def test_the_result_of_main_is_returned() -> None:
    async def main(stop: asyncio.Event) -> int:
        await asyncio.sleep(0)
        return 7

    assert runner.run(main) == 7
    assert runner.run(main, fast_loop=False) == 7


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_sets_stop_and_calls_on_stop(sig: int) -> None:
    calls: list[str] = []

    async def main(stop: asyncio.Event) -> str:
        _signal_soon(sig)
        await stop.wait()
        return "stopped cleanly"

    assert runner.run(main, on_stop=lambda: calls.append("on_stop")) == "stopped cleanly"
    assert calls == ["on_stop"]
    # outside run the signals are Python's own again
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_with_cancel_a_signal_raises_interrupted() -> None:
    async def main(stop: asyncio.Event) -> None:
        _signal_soon(signal.SIGTERM)
        await asyncio.Event().wait()  # never set: only the cancel ends it

    with pytest.raises(runner.Interrupted):
        runner.run(main, cancel=True)


def test_an_inner_block_takes_the_signals_and_gives_them_back() -> None:
    async def main(stop: asyncio.Event) -> list[str]:
        seen: list[str] = []
        inner = asyncio.Event()
        with runner.on_stop_signals(lambda: (seen.append("inner"), inner.set())):
            _signal_soon(signal.SIGINT)
            await inner.wait()
        assert not stop.is_set()
        _signal_soon(signal.SIGTERM)
        await stop.wait()
        seen.append("outer")
        return seen

    assert runner.run(main) == ["inner", "outer"]
