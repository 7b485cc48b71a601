"""An HTTP hook's deadline: a number for any count of retries and any timeout, and a wait
of any length, never an OverflowError (a job that died with a traceback, no event)."""

from __future__ import annotations

import math
import os
import time

import pytest

from henbackup.config.model import HttpHook
from henbackup.hooks import http
from henbackup.process import NEVER


@pytest.mark.parametrize("retries", [1100, 10**6, 10**400])
def test_the_budget_of_any_count_of_retries_is_a_number(retries: int) -> None:
    budget = http._budget(HttpHook("https://example.org", timeout=1.0, retries=retries), 1.0)
    assert budget > 1100 * 1.0 + 1000 * http.MAX_BACKOFF  # each wait past the 6th: a minute


def test_the_budget_of_a_few_retries_counts_each_wait() -> None:
    hook = HttpHook("https://example.org", timeout=10.0, retries=3)
    assert http._budget(hook, 1.0) == 4 * 10.0 + (1 + 2 + 4) + http.SLACK


@pytest.mark.parametrize("days", [48, math.inf])
def test_a_deadline_beyond_what_poll_waits_is_waited_for_in_steps(days: float) -> None:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"done")
    os.close(write_fd)
    try:
        assert http._read_all(read_fd, NEVER, time.monotonic() + days * 86400) == b"done"
    finally:
        os.close(read_fd)
