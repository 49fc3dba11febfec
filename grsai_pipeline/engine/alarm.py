"""The engine loop's alarm: it sleeps until rung or until its time, whichever comes first."""

from __future__ import annotations

import asyncio


class Alarm:
    """One future per sleep, rung from callbacks on the same loop.

    ``asyncio.wait_for`` on an ``Event`` costs a task, a timer and three passes of the event
    loop per wake-up; at a thousand answers a second those passes were the engine's slack
    (issue 9: a run took 0.5 s longer than with this alarm, at 5,000 tasks).
    """

    def __init__(self) -> None:
        self._ringing: asyncio.Future[None] | None = None

    def ring(self) -> None:
        """Wake the sleeper, if one sleeps; a ring while nobody sleeps is not kept (the loop
        looks at everything again before it sleeps)."""
        if self._ringing is not None and not self._ringing.done():
            self._ringing.set_result(None)

    async def sleep(self, delay_s: float) -> None:
        """Until rung, or ``delay_s`` at most."""
        loop = asyncio.get_running_loop()
        self._ringing = loop.create_future()
        timer = loop.call_later(max(0.0, delay_s), self.ring)
        try:
            await self._ringing
        finally:
            timer.cancel()
            self._ringing = None
