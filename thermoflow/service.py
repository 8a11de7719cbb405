"""Running a long-lived component: until SIGTERM or SIGINT, then a clean stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)``; SIGTERM/SIGINT set ``stop``, so it finishes its batch, commits and returns.

    This is how every pipeline command runs, so `thermoflow run` (or a container runtime)
    can stop it with SIGTERM and get exit code 0.
    """

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())
