"""Waiting for another process that signals only through files and sockets (no event to block on)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(check: Callable[[], bool], timeout: float, first: float = 0.01, most: float = 0.25) -> bool:
    """True once check() holds, False after `timeout` s. Polls backing off from 10 ms (the other
    side is usually quick) to 250 ms (not busy-waiting while it is slow)."""
    deadline, interval = time.monotonic() + timeout, first
    while True:
        if check():
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(interval, left))
        interval = min(interval * 2, most)
