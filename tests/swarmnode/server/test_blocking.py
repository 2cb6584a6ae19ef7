"""run_blocking: results and errors come back; a call still blocked never holds up the process's exit."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from swarmnode.server.blocking import run_blocking


def test_it_returns_the_result_and_raises_the_error():
    assert asyncio.run(run_blocking(pow, 2, 10)) == 1024
    with pytest.raises(ZeroDivisionError):
        asyncio.run(run_blocking(divmod, 1, 0))


def test_a_cancelled_wait_abandons_the_call():
    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await run_blocking(time.sleep, 0.5)
        await asyncio.sleep(0.6)  # the thread finishes later and finds nobody waiting: no error

    asyncio.run(main())


def test_the_process_exits_while_a_call_is_still_blocked():
    """asyncio.to_thread would keep this process alive for the whole 60 s sleep."""
    code = (
        "import asyncio, time\n"
        "from swarmnode.server.blocking import run_blocking\n"
        "async def main():\n"
        "    try:\n"
        "        await asyncio.wait_for(run_blocking(time.sleep, 60), 0.2)\n"
        "    except TimeoutError:\n"
        "        print('gave up', flush=True)\n"
        "asyncio.run(main())\n"
    )
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "gave up"
    assert time.monotonic() - started < 15
