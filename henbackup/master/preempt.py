"""Preemption: a job of higher priority that waited `preempt_after` for a slot pauses the
lowest-priority running job, which lends it its slot until it is done.

The master decides, from its status model (the queue as the job events tell it, and the
tickets of processes outside the daemon), never from the queue's lock: `decide` is a pure
function of what runs, what waits and what is paused. The paused job keeps its flock on
its slot and its repository; the slots file says `max_concurrent_jobs` plus the slots lent
(`lent_slots`), so the waiting job finds a free one. Once that job runs, its slot is no
longer counted as lent: when it ends, the slot it frees is the paused job's again, and no
other waiting job can take it before the master resumes the paused one.

The programs are paused by limits/pause.py (the freezer or SIGSTOP); the job process is
never stopped (it may hold the queue's lock), and its stall watch sees the pause's mark.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from henbackup.config.model import Priority
from henbackup.limits import pause
from henbackup.limits.cgroups import Host
from henbackup.loop import Loop, Timer
from henbackup.observe.events import EmitFunction
from henbackup.observe.status import LiveJob, StatusModel
from henbackup.scheduler.ticket import mode_for

IMMEDIATE = Priority(Priority.IMMEDIATE_BAND).effective
# While a job is paused, its programs are paused again this often: one started since (the
# next restic of its pipeline) is stopped too; and the decision is reviewed.
REPAUSE_INTERVAL = 1.0
SLOTS_RETRY = 5.0  # a slots file that could not be written (a full disk) is tried again


@dataclass(frozen=True)
class Pause:
    """A paused job, and the job it yields its slot to."""

    job: str  # the paused job's id
    pid: int  # its job process
    priority: int  # Priority.effective
    for_job: str  # the ticket id of the job it yields to
    since: float  # epoch seconds


@dataclass(frozen=True)
class Decision:
    pause: tuple[tuple[LiveJob, LiveJob], ...] = ()  # (the job to pause, the one it yields to)
    resume: tuple[str, ...] = ()  # ids of paused jobs to resume


def needs_slot(job: LiveJob) -> bool:
    return job.priority != IMMEDIATE


def waited(job: LiveJob, now: float) -> float:
    return now - (job.queued_at or job.since)


def decide(
    queue: Sequence[LiveJob],
    pauses: Mapping[str, Pause],
    now: float,
    after: float,
    max_jobs: int,
    forgetting: Collection[str] = (),
    stopping: Collection[str] = (),
) -> Decision:
    """What to pause and resume now. `queue`: the status model's queue (running jobs, then
    waiting ones in the order they will run); `forgetting`: the backups whose run ends with
    a forget, which needs restic's exclusive lock (a paused backup on its repository would
    hold it back: such a job never pauses one there); `stopping`: the owners (workers)
    stopping, whose jobs are never paused (a frozen restic cannot stop cleanly).

    Resumed: a paused job whose job is done (or that is gone), while slots allow (the
    highest priority first). Paused, for each waiting job that needs a slot, waited
    `after` and is not held back by its repository, while running jobs hold every slot:
    the lowest-priority running job of the daemon below it (the latest started among
    equals). Equal priorities never pause each other.
    """
    running = [job for job in queue if job.state == "running"]
    waiting = [job for job in queue if job.state == "queued"]
    live = {job.job for job in queue} | {job.ticket_id for job in queue}
    gone = [p.job for p in pauses.values() if p.job not in live]
    paused = set(pauses) - set(gone)
    holders = {j.ticket_id for j in running if needs_slot(j) and j.job not in paused}
    resume = list(gone)
    done = [p for p in pauses.values() if p.job in paused and p.for_job not in live]
    for ended in sorted(done, key=lambda p: (-p.priority, p.since)):
        if len(holders) >= max_jobs:
            break
        resume.append(ended.job)
        paused.discard(ended.job)
        holders.update(j.ticket_id for j in running if j.job == ended.job)
    yielded_to = {p.for_job for p in pauses.values() if p.job in paused}
    pending = {ticket for ticket in yielded_to if any(j.ticket_id == ticket for j in waiting)}
    chosen: list[tuple[LiveJob, LiveJob]] = []
    for candidate in waiting:
        if (
            not needs_slot(candidate)
            or candidate.ticket_id in yielded_to
            or waited(candidate, now) < after
            or not _repository_free(candidate, running)
        ):
            continue
        if len(holders) + len(pending) < max_jobs:
            break  # a slot is free for it (or soon): it waits for something else
        victims = [
            job
            for job in running
            if job.owner
            and job.owner not in stopping
            and job.pid
            and needs_slot(job)
            and job.job not in paused
            and job.priority < candidate.priority
            and not _holds_back(candidate, job, forgetting)
        ]
        if not victims:
            continue
        victim = min(victims, key=lambda job: (job.priority, -job.since))
        chosen.append((victim, candidate))
        paused.add(victim.job)
        holders.discard(victim.ticket_id)
        pending.add(candidate.ticket_id)
    return Decision(tuple(chosen), tuple(resume))


def _repository_free(candidate: LiveJob, running: Sequence[LiveJob]) -> bool:
    """Whether no running job (paused or not) holds the candidate's repository in a mode
    it cannot share: then pausing would not let it start."""
    shared = mode_for(candidate.key.operation) == "shared"
    return all(
        job.key.repository != candidate.key.repository
        or (shared and mode_for(job.key.operation) == "shared")
        for job in running
    )


def _holds_back(candidate: LiveJob, victim: LiveJob, forgetting: Collection[str]) -> bool:
    """A paused job keeps its restic lock: a forget of the candidate's backup on the same
    repository would wait for it, and it for the candidate."""
    return candidate.key.backup in forgetting and victim.key.repository == candidate.key.repository


def lent_slots(pauses: Mapping[str, Pause], queue: Sequence[LiveJob]) -> int:
    """Slots lent by paused jobs to jobs that have not started yet: once it runs, a job
    uses the lent slot, and its end must free no slot for anyone but the paused job."""
    running = {job.ticket_id for job in queue if job.state == "running" and job.job not in pauses}
    return sum(1 for p in pauses.values() if p.for_job not in running)


@dataclass
class Preemption:
    """The master's side: decides after every job event and on a timer, pauses and
    resumes programs, says so in events and the status model, sets the slots."""

    loop: Loop
    emit: EmitFunction
    model: StatusModel
    set_slots: Callable[[int], None]
    outsiders: Callable[[], Sequence[object]]  # the queue's tickets (no lock)
    marks: Path | None = None  # None: no queue directory, nothing is ever paused
    host: Host | None = None  # where the job leaves are (set once detected)
    max_jobs: int = 1
    after: float = 5.0
    forgetting: frozenset[str] = frozenset()
    on_change: Callable[[], None] = lambda: None  # a job was paused or resumed: STATUS=
    stopping: Callable[[], Collection[str]] = tuple  # the workers stopping (their keys)
    pauses: dict[str, Pause] = field(default_factory=dict)
    _slots: int | None = None  # what the slots file says, once written
    _slots_failed: bool = False  # the last write failed (said once, retried on a timer)
    _timer: Timer | None = None
    _waiting_since: dict[str, float] = field(default_factory=dict)  # monotonic, by job id

    def configure(self, max_jobs: int, after: float, forgetting: frozenset[str]) -> None:
        """At start and on reload: the daemon's settings; sets the slots."""
        self.max_jobs, self.after, self.forgetting = max_jobs, after, forgetting
        self._slots = None
        self.review()

    def review(self) -> None:
        """Decide, act, set the slots, and look again when something may change."""
        now = time.time()
        queue = self._steady(self.model.queue(self.outsiders()), now)  # type: ignore[arg-type]
        if self.marks is not None:
            stopping = self.stopping()
            decision = decide(
                queue, self.pauses, now, self.after, self.max_jobs, self.forgetting, stopping
            )
            for job_id in decision.resume:
                self._resume(job_id, now)
            for victim, waiting in decision.pause:
                self._pause(victim, waiting, now)
            for paused in self.pauses.values():  # its next program, if one started since
                pause.pause(self.marks, paused.pid)
            if decision.pause or decision.resume:
                self.on_change()
                queue = self._steady(self.model.queue(self.outsiders()), now)  # type: ignore[arg-type]
        slots = self.max_jobs + lent_slots(self.pauses, queue)
        if slots != self._slots:
            self._set_slots(slots)
        self._plan_next(queue, now)

    def _steady(self, queue: Sequence[LiveJob], now: float) -> list[LiveJob]:
        """The queue, each waiting job's arrival on a steady footing: when first seen, the
        wait it had (by the wall clock, never less than none) is fixed on the monotonic
        clock. A clock stepped back (NTP, a Raspberry Pi without a real-time clock) held
        preemption back as long; one stepped forward let every waiting job preempt at once."""
        clock, since, steady = time.monotonic(), {}, []
        for job in queue:
            if job.state == "queued":
                first = self._waiting_since.get(job.job)
                if first is None:
                    first = clock - max(0.0, now - (job.queued_at or job.since))
                since[job.job] = first
                job = replace(job, queued_at=now - (clock - first))
            steady.append(job)
        self._waiting_since = since
        return steady

    def _set_slots(self, slots: int) -> None:
        """Write the slots file; when it cannot be (ENOSPC, EROFS), say so once and leave
        `_slots` as it was, so that the next review tries again."""
        try:
            self.set_slots(slots)
        except OSError as error:
            if not self._slots_failed:
                reason = error.strerror or str(error)
                message = f"cannot set the queue's slots to {slots} ({reason}); tried again"
                self.emit("daemon.error", message, source="slots", error=reason)
            self._slots_failed = True
            return
        self._slots, self._slots_failed = slots, False

    def resume_all(self) -> None:
        """As the daemon stops: every paused job goes on (and can then stop cleanly)."""
        for job_id in list(self.pauses):
            self._resume(job_id, time.time())

    def release(self, owner: str) -> None:
        """Worker `owner` is about to stop (a reload changed or removed its backup): its
        paused jobs go on first, to stop cleanly, and are never paused again meanwhile
        (`stopping` says so from now on)."""
        paused = [job for job, p in self.pauses.items() if self._owner(job) == owner]
        for job_id in paused:
            self._resume(job_id, time.time())
        if paused:
            self.review()

    def _owner(self, job_id: str) -> str | None:
        job = self.model.live.get(job_id)
        return None if job is None else job.owner

    def resume_cancelled(self, ticket: str) -> None:
        """The job of queue ticket `ticket` is cancelled: if paused, it goes on, to act on
        it (a frozen restic could not)."""
        jobs = [job for job in self.model.live.values() if job.ticket_id == ticket]
        paused = [job.job for job in jobs if job.job in self.pauses]
        for job_id in paused:
            self._resume(job_id, time.time())
        if paused:
            self.review()

    def _plan_next(self, queue: Sequence[LiveJob], now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # A job that has waited long enough is looked at again when the queue changes (an
        # event): only the waits still running and the pauses need a timer.
        dues = [
            due
            for job in queue
            if job.state == "queued"
            and needs_slot(job)
            and (due := (job.queued_at or job.since) + self.after - now) > 0
        ]
        if self.pauses:
            dues.append(REPAUSE_INTERVAL)
        if self._slots_failed:
            dues.append(SLOTS_RETRY)
        if dues and self.marks is not None:
            self._timer = self.loop.call_later(min(dues) + 0.01, self.review)

    def _pause(self, victim: LiveJob, waiting: LiveJob, now: float) -> None:
        assert self.marks is not None
        how = pause.pause(self.marks, victim.pid) or "SIGSTOP"  # its next program, then
        self.pauses[victim.job] = Pause(
            victim.job, victim.pid, victim.priority, waiting.ticket_id, now
        )
        fields = {
            **_identity(victim),
            "paused_for": waiting.ticket_id,
            "paused_for_priority": waiting.priority,
            "paused_how": how,
        }
        self.emit(
            "job.paused",
            f"{victim.title}: {victim.key.operation} paused ({how}) for {waiting.title}, "
            f"of higher priority, waiting {waited(waiting, now):.0f}s for a slot",
            **fields,
        )
        self.model.apply("job.paused", fields, victim.owner)

    def _resume(self, job_id: str, now: float) -> None:
        assert self.marks is not None
        paused = self.pauses.pop(job_id)
        pause.resume(self.marks, paused.pid, self.host)
        job = self.model.live.get(job_id)
        if job is None:  # it ended meanwhile (cancelled, its process died)
            return
        fields = {**_identity(job), "paused_sec": round(now - paused.since, 1)}
        self.emit(
            "job.resumed",
            f"{job.title}: {job.key.operation} resumed after {now - paused.since:.0f}s",
            **fields,
        )
        self.model.apply("job.resumed", fields, job.owner)


def _identity(job: LiveJob) -> dict[str, str | int | None]:
    """The event fields that name a job (as jobs/job.py's Job.fields)."""
    ticket = {"ticket": job.ticket} if job.ticket else {}
    return {
        "job": job.job,
        "operation": job.key.operation,
        "backup": job.key.backup or None,
        "repository": job.key.repository,
        "trigger": job.trigger,
        "priority": job.priority,
        **ticket,
    }
