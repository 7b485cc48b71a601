"""Schedules against controllable wall and monotonic clocks: restarts, missed runs, failures,
clock steps both ways, suspend, DST; and the real timerfd alarm."""

from __future__ import annotations

import ctypes
import os
import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from henbackup.config.model import Cron, Interval
from henbackup.loop import Loop
from henbackup.names import backup_record
from henbackup.worker import schedule
from henbackup.worker.schedule import (
    FUTURE_TOLERANCE,
    Fired,
    LoopAlarm,
    ScheduleTimer,
    TimerfdAlarm,
    local_zone,
    next_run,
)
from henbackup.worker.state import ScheduleRecord, StateStore

PARIS = ZoneInfo("Europe/Paris")
HOUR, DAY = 3600.0, 86400.0
DAILY = Interval(DAY, "1d")
AT_3 = Cron("0 3 * * *")


def at(text: str, zone=PARIS) -> float:
    """Epoch seconds of a local time such as "2024-05-01 03:00"."""
    return datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


def local(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, PARIS).strftime("%Y-%m-%d %H:%M:%S %Z")


# next_run
def test_never_succeeded_is_due_now():
    now = at("2024-05-01 12:00")
    assert next_run([DAILY], None, now, zone=PARIS).when == now
    assert next_run([AT_3], None, now, zone=PARIS).when == now


def test_an_interval_counts_from_the_last_success():
    last = at("2024-05-01 12:00")
    assert next_run([DAILY], last, last + 10, zone=PARIS).when == last + DAY


def test_cron_is_the_first_occurrence_after_the_last_success():
    last = at("2024-05-01 03:00:05")
    assert local(next_run([AT_3], last, last + 60, zone=PARIS).when) == "2024-05-02 03:00:00 CEST"


def test_the_earliest_entry_wins_and_is_named():
    last = at("2024-05-01 12:00")
    planned = next_run([DAILY, Cron("0 18 * * *")], last, last + 1, zone=PARIS)
    assert local(planned.when) == "2024-05-01 18:00:00 CEST"
    assert planned.label == 'cron "0 18 * * *"'
    assert next_run([DAILY], last, last, zone=PARIS).label == "every 1d"


def test_many_missed_occurrences_are_one_due_time_in_the_past():
    last = at("2024-05-01 03:00")
    now = at("2024-05-09 12:00")  # down for eight nights
    for entries in ([AT_3], [Interval(HOUR, "1h")], [AT_3, DAILY]):
        assert next_run(entries, last, now, zone=PARIS).when < now


def test_an_empty_schedule_is_refused():
    with pytest.raises(ValueError):
        next_run([], None, 0.0)


def test_dst_spring_forward_runs_once_right_after_the_gap():
    last = at("2024-03-30 02:30")
    planned = next_run([Cron("30 2 * * *")], last, last + 1, zone=PARIS)
    assert local(planned.when) == "2024-03-31 03:00:00 CEST"  # 02:30 does not exist


def test_dst_fall_back_runs_the_repeated_time_once():
    first = datetime(2024, 10, 27, 2, 30, tzinfo=PARIS, fold=0).timestamp()
    planned = next_run([Cron("30 2 * * *")], first, first + 60, zone=PARIS)
    assert local(planned.when) == "2024-10-28 02:30:00 CET"  # not 02:30 CET an hour later


def test_an_interval_is_elapsed_time_across_dst():
    last = at("2024-03-30 12:00")
    assert next_run([DAILY], last, last, zone=PARIS).when - last == DAY  # 13:00 local


def test_a_clock_set_back_a_little_does_not_run_again():
    last = at("2024-05-01 03:00:05")
    now = last - HOUR  # NTP stepped the clock back after the run
    assert next_run([DAILY], last, now, zone=PARIS).when == last + DAY
    assert local(next_run([AT_3], last, now, zone=PARIS).when) == "2024-05-02 03:00:00 CEST"


def test_a_record_from_far_in_the_future_is_not_waited_for_but_run_now():
    """Counted from now, it was put off again at each start (a laptop started daily never
    ran a weekly backup)."""
    now = at("2024-05-01 12:00")
    last = now + FUTURE_TOLERANCE + 1  # written by a clock that was years off
    assert next_run([DAILY], last, now, zone=PARIS).when == now
    assert next_run([AT_3], last, now, zone=PARIS).when == now
    failed = now - 60  # a failure since is retried after its delay, as always
    assert next_run([DAILY], last, now, last_attempt=failed).when == failed + 600


def test_a_failed_run_is_retried_later_never_in_a_loop():
    last = at("2024-05-01 03:00")
    failed = at("2024-05-02 03:00")
    planned = next_run([DAILY], last, failed + 1, last_attempt=failed, zone=PARIS)
    assert planned.when == failed + 600
    hourly = Interval(60.0, "1m")  # its next regular time comes before the retry delay
    assert next_run([hourly], last, failed + 1, last_attempt=failed).when == failed + 60


def test_a_failure_long_ago_is_retried_now():
    last = at("2024-05-01 03:00")
    failed = at("2024-05-02 03:00")
    now = failed + 5 * DAY
    assert next_run([DAILY], last, now, last_attempt=failed, zone=PARIS).when <= now


def test_never_succeeded_and_failing_still_backs_off():
    failed = at("2024-05-02 03:00")
    assert next_run([DAILY], None, failed + 1, last_attempt=failed).when == failed + 600


def test_local_zone_follows_tz(monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Paris")
    assert local_zone().utcoffset(datetime(2024, 7, 1)).total_seconds() == 7200
    monkeypatch.setenv("TZ", ":America/New_York")
    assert local_zone().utcoffset(datetime(2024, 1, 1)).total_seconds() == -5 * 3600
    monkeypatch.setenv("TZ", "Nowhere/Atlantis")
    assert local_zone().utcoffset(datetime(2024, 1, 1)).total_seconds() == 0


# ScheduleTimer with simulated clocks
class Clocks:
    """A wall clock and a monotonic one that the test moves, and timerfd-like alarms."""

    def __init__(self, wall: float) -> None:
        self.wall, self.mono = wall, 1000.0
        self.alarms: list[FakeTimerfd] = []

    def time(self) -> float:
        return self.wall

    def pass_time(self, seconds: float, asleep: bool = False) -> None:
        """Let `seconds` pass, ringing alarms on the way; asleep: a suspend, where the
        monotonic clock stands still."""
        end = self.wall + seconds
        while True:
            waiting = [a for a in self.alarms if a.when is not None and a.when <= end]
            if not waiting:
                break
            alarm = min(waiting, key=lambda a: a.when)
            step = max(alarm.when - self.wall, 0.0)
            self.wall += step
            self.mono += 0 if asleep else step
            alarm.ring()
        self.mono += 0 if asleep else end - self.wall
        self.wall = end

    def set_wall(self, wall: float) -> None:
        """A clock step (date -s, NTP): timerfds with CANCEL_ON_SET ring at once."""
        self.wall = wall
        for alarm in list(self.alarms):
            if alarm.when is not None:
                alarm.ring()


class FakeTimerfd:
    def __init__(self, clocks: Clocks, wake) -> None:
        self.clocks, self.wake, self.when = clocks, wake, None
        clocks.alarms.append(self)

    def set(self, when: float) -> None:
        self.when = when

    def cancel(self) -> None:
        self.when = None

    def close(self) -> None:
        self.clocks.alarms.remove(self)

    def ring(self) -> None:
        self.when = None  # one-shot; the owner re-arms
        self.wake()


def make_timer(clocks: Clocks, entries, fired: list[Fired]) -> ScheduleTimer:
    return ScheduleTimer(
        Loop(),
        entries,
        fired.append,
        wall_clock=clocks.time,
        zone=PARIS,
        make_alarm=lambda wake: FakeTimerfd(clocks, wake),
    )


def run_once_done(clocks: Clocks, timer: ScheduleTimer, record: ScheduleRecord) -> ScheduleRecord:
    """The worker's part: a run starts now, succeeds, and the timer is re-armed."""
    record = ScheduleRecord(last_success=clocks.wall, last_attempt=clocks.wall)
    timer.arm(record)
    return record


def test_a_run_missed_while_down_fires_once_at_startup():
    clocks = Clocks(at("2024-05-09 12:00"))
    fired: list[Fired] = []
    timer = make_timer(clocks, [AT_3], fired)
    timer.arm(ScheduleRecord(at("2024-05-01 03:00"), at("2024-05-01 03:00")))
    clocks.pass_time(1)
    assert [f.trigger for f in fired] == ["startup"]
    assert "missed while the daemon was down" in fired[0].reason
    clocks.pass_time(DAY)  # fired: quiet until the worker re-arms after the run
    assert len(fired) == 1


def test_a_regular_due_time_fires_as_schedule_and_then_the_next():
    clocks = Clocks(at("2024-05-01 12:00"))
    fired: list[Fired] = []
    timer = make_timer(clocks, [AT_3], fired)
    record = ScheduleRecord(at("2024-05-01 03:00"), at("2024-05-01 03:00"))
    assert local(timer.arm(record).when) == "2024-05-02 03:00:00 CEST"
    clocks.pass_time(15 * HOUR)
    assert [(f.trigger, local(f.due)) for f in fired] == [("schedule", "2024-05-02 03:00:00 CEST")]
    record = run_once_done(clocks, timer, record)
    assert local(timer.next.when) == "2024-05-03 03:00:00 CEST"
    clocks.pass_time(DAY)
    assert len(fired) == 2 and fired[1].reason == 'cron "0 3 * * *"'


def test_never_run_fires_at_startup_with_the_reason():
    clocks = Clocks(at("2024-05-01 12:00"))
    fired: list[Fired] = []
    make_timer(clocks, [DAILY], fired).arm(ScheduleRecord())
    clocks.pass_time(0)
    assert fired[0].trigger == "startup"
    assert fired[0].reason == "every 1d, never succeeded"


def test_a_re_arm_before_the_startup_run_makes_it_a_schedule_run():
    clocks = Clocks(at("2024-05-09 12:00"))
    fired: list[Fired] = []
    timer = make_timer(clocks, [Interval(HOUR, "1h")], fired)
    timer.arm(ScheduleRecord(at("2024-05-01 03:00"), at("2024-05-01 03:00")))
    timer.arm(ScheduleRecord(clocks.wall, clocks.wall))  # a watch run came first and succeeded
    clocks.pass_time(HOUR)
    assert [(f.trigger, f.reason) for f in fired] == [("schedule", "every 1h")]


def test_a_clock_set_back_while_waiting_re_arms_without_running():
    clocks = Clocks(at("2024-05-01 12:00"))
    fired: list[Fired] = []
    timer = make_timer(clocks, [AT_3], fired)
    timer.arm(ScheduleRecord(at("2024-05-01 03:00"), at("2024-05-01 03:00")))
    clocks.pass_time(14 * HOUR)  # 02:00
    clocks.set_wall(clocks.wall - 5 * HOUR)  # back to 21:00 the day before
    assert fired == []
    assert local(timer.next.when) == "2024-05-02 03:00:00 CEST"
    clocks.pass_time(6 * HOUR - 1)
    assert fired == []
    clocks.pass_time(1)
    assert len(fired) == 1


def test_a_clock_set_forward_past_many_occurrences_fires_once():
    clocks = Clocks(at("2024-05-01 11:59"))
    fired: list[Fired] = []
    timer = make_timer(clocks, [Cron("*/5 * * * *")], fired)
    timer.arm(ScheduleRecord(at("2024-05-01 11:58"), at("2024-05-01 11:58")))
    clocks.set_wall(clocks.wall + 3 * HOUR)
    assert len(fired) == 1 and fired[0].trigger == "schedule"
    clocks.pass_time(60)
    assert len(fired) == 1  # waits for the worker to re-arm after its single run


def test_a_suspend_over_the_due_time_fires_on_resume_once():
    clocks = Clocks(at("2024-05-01 22:00"))
    fired: list[Fired] = []
    timer = make_timer(clocks, [AT_3, Interval(HOUR, "1h")], fired)
    timer.arm(ScheduleRecord(at("2024-05-01 21:30"), at("2024-05-01 21:30")))
    clocks.pass_time(10 * HOUR, asleep=True)
    assert len(fired) == 1


def test_restarts_neither_double_nor_lose_a_run(tmp_path):
    store = StateStore(tmp_path, pytest.fail)
    key = backup_record("pictures")
    clocks = Clocks(at("2024-05-01 02:59"))
    fired: list[Fired] = []
    timer = make_timer(clocks, [AT_3], fired)
    timer.arm(store.load(key))  # first start ever: due now
    clocks.pass_time(0)
    assert [f.trigger for f in fired] == ["startup"]
    start = clocks.wall
    store.record_attempt(key, start)
    clocks.pass_time(120)  # the run takes two minutes
    timer.arm(store.record_success(key, start))
    clocks.pass_time(10)  # 03:01:10 — the 03:00 occurrence came after the run's start
    assert len(fired) == 2  # so it runs once more, as cron says
    timer.arm(store.record_success(key, store.record_attempt(key, clocks.wall).last_attempt))
    # the daemon restarts at 03:05: nothing is due before tomorrow 03:00
    clocks.pass_time(230)
    restarted: list[Fired] = []
    timer2 = make_timer(clocks, [AT_3], restarted)
    assert local(timer2.arm(store.load(key)).when) == "2024-05-02 03:00:00 CEST"
    clocks.pass_time(DAY)
    assert [f.trigger for f in restarted] == ["schedule"]


def test_a_restart_after_a_failed_run_retries_after_the_delay():
    clocks = Clocks(at("2024-05-01 03:01"))
    fired: list[Fired] = []
    timer = make_timer(clocks, [AT_3], fired)
    failed = at("2024-05-01 03:00")
    record = ScheduleRecord(at("2024-04-30 03:00"), last_attempt=failed, last_failure=failed)
    assert timer.arm(record).when == at("2024-05-01 03:10")
    clocks.pass_time(540)
    assert fired[0].trigger == "schedule" and "retrying after a failed run" in fired[0].reason


def test_a_restart_after_an_interrupted_run_runs_it_at_once():
    """The daemon stopped (or crashed) during the 03:00 run: no end was recorded. Restarted
    at 03:01 it runs the backup at once, as a missed run, not ten minutes later."""
    clocks = Clocks(at("2024-05-01 03:01"))
    fired: list[Fired] = []
    timer = make_timer(clocks, [AT_3], fired)
    interrupted = at("2024-05-01 03:00")
    record = ScheduleRecord(last_success=at("2024-04-30 03:00"), last_attempt=interrupted)
    assert timer.arm(record).when == interrupted
    clocks.pass_time(0)
    assert [(f.trigger, f.reason, f.due) for f in fired] == [
        ("startup", 'cron "0 3 * * *", its last run was interrupted', interrupted)
    ]


def test_an_interrupted_first_run_runs_at_once_at_the_next_start():
    clocks = Clocks(at("2024-05-01 12:00"))
    fired: list[Fired] = []
    make_timer(clocks, [DAILY], fired).arm(ScheduleRecord(last_attempt=clocks.wall - 5))
    clocks.pass_time(0)
    assert [(f.trigger, f.reason) for f in fired] == [
        ("startup", "every 1d, its last run was interrupted")
    ]


def test_an_interrupted_run_is_due_now_even_with_the_clock_set_back():
    now = at("2024-05-01 12:00")
    last = now - HOUR
    planned = next_run([DAILY], last, now, last_attempt=last + 60, interrupted=True)
    assert planned.when == last + 60
    ahead = now + HOUR  # written before the clock went back an hour
    assert next_run([DAILY], last, now, last_attempt=ahead, interrupted=True).when == now


def test_cancel_and_close_stop_the_timer():
    clocks = Clocks(at("2024-05-01 12:00"))
    fired: list[Fired] = []
    timer = make_timer(clocks, [DAILY], fired)
    timer.arm(ScheduleRecord(clocks.wall, clocks.wall))
    timer.cancel()
    clocks.pass_time(2 * DAY)
    assert fired == [] and timer.next is None
    assert timer.fileno() == -1  # the fake alarm has no fd; TimerfdAlarm's is its .fd
    timer.close()
    assert clocks.alarms == []


def test_an_empty_schedule_arms_nothing():
    clocks = Clocks(at("2024-05-01 12:00"))
    timer = make_timer(clocks, [], [])
    assert timer.arm(ScheduleRecord()) is None


# LoopAlarm: the loop's monotonic clock
class Monotonic:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_loop_alarm_rechecks_the_wall_clock_when_its_deadline_comes():
    mono = Monotonic()
    loop = Loop(mono)
    wall = [at("2024-05-01 12:00")]
    fired: list[Fired] = []
    timer = ScheduleTimer(
        loop,
        [Interval(HOUR, "1h")],
        fired.append,
        wall_clock=lambda: wall[0],
        zone=PARIS,
        make_alarm=lambda wake: LoopAlarm(loop, wake, lambda: wall[0]),
    )
    timer.arm(ScheduleRecord(wall[0], wall[0]))
    mono.now += HOUR
    wall[0] += HOUR - 600  # the wall clock was set back 10 minutes meanwhile
    loop.run_once()
    assert fired == []  # not due by the wall clock: re-armed for 10 more minutes
    mono.now += 600
    wall[0] += 600
    loop.run_once()
    assert len(fired) == 1
    loop.close()


# TimerfdAlarm: the real kernel timer
def pump(loop: Loop, done, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        guard = loop.call_later(0.05, lambda: None)
        loop.run_once()
        guard.cancel()


def test_timerfd_alarm_rings_at_the_wall_clock_time():
    loop = Loop()
    woken: list[float] = []
    alarm = TimerfdAlarm(loop, lambda: woken.append(time.time()))
    when = time.time() + 0.1
    alarm.set(when)
    pump(loop, lambda: woken)
    assert woken and woken[0] >= when
    alarm.cancel()
    alarm.set(time.time() + 0.05)
    alarm.cancel()
    woken.clear()
    pump(loop, lambda: woken, timeout=0.3)
    assert woken == []
    alarm.close()
    loop.close()


_ADJ_SETOFFSET, _ADJ_NANO = 0x0100, 0x2000


def shift_clock(nanoseconds: int) -> int:
    """clock_adjtime(ADJ_SETOFFSET): step CLOCK_REALTIME by `nanoseconds`; returns errno."""
    timex = ctypes.create_string_buffer(208)  # struct timex on 64-bit Linux
    ctypes.c_uint32.from_buffer(timex, 0).value = _ADJ_SETOFFSET | _ADJ_NANO
    seconds, rest = divmod(nanoseconds, 10**9)
    ctypes.c_long.from_buffer(timex, 72).value = seconds  # .time.tv_sec
    ctypes.c_long.from_buffer(timex, 80).value = rest  # .time.tv_usec, in ns with ADJ_NANO
    libc = ctypes.CDLL(None, use_errno=True)
    return 0 if libc.clock_adjtime(0, timex) >= 0 else ctypes.get_errno()


def test_timerfd_alarm_wakes_when_the_clock_is_set():
    # A real clock step, the smallest there is: +1 ns then -1 ns (net zero; a step of 0 is
    # ignored by the kernel). Needs CAP_SYS_TIME (root, as CI runs).
    loop = Loop()
    woken: list[int] = []
    alarm = TimerfdAlarm(loop, lambda: woken.append(1))
    alarm.set(time.time() + DAY)
    code = shift_clock(1) or shift_clock(-1)
    if code:
        alarm.close()
        loop.close()
        pytest.skip(f"cannot step the clock here: {os.strerror(code)}")
    pump(loop, lambda: woken)
    assert woken == [1]  # ECANCELED: the owner re-checks the wall clock
    alarm.close()
    loop.close()


def test_only_a_schedule_with_cron_entries_reads_the_time_zone(monkeypatch):
    # Reading /etc/localtime in every worker costs each some of its own memory: an
    # interval-only schedule (the most common) has no use for it.
    read: list[str] = []
    monkeypatch.setattr(schedule, "local_zone", lambda: read.append("zone") or PARIS)
    clocks = Clocks(at("2024-05-09 12:00"))
    for entries, reads in (([DAILY], []), ([DAILY, AT_3], ["zone"])):
        timer = ScheduleTimer(
            Loop(), entries, print, wall_clock=clocks.time, make_alarm=lambda wake: None
        )
        assert read == reads
        assert timer.zone is (PARIS if reads else UTC)
        read.clear()
