"""Tickets and the order of the host-wide queue: pure data and pure functions, no I/O.

A ticket is one job's place in the queue. `plan()` decides which waiting tickets may start
now, given what the kernel says is free (slots, repository locks): every process that looks
at the queue runs the same function on the same files, so they all agree on whose turn it is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from henbackup.config.model import Priority
from henbackup.scheduler import procs

Mode = Literal["shared", "exclusive"]
# A job id is a ticket's file name: a plain name, never "" nor a path out of the directory.
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
TicketState = Literal["waiting", "running"]

# henbackup.toml(5), PRIORITIES: check and prune hold their repository alone; others share it.
EXCLUSIVE_OPERATIONS = frozenset({"check", "prune"})


def mode_for(operation: str) -> Mode:
    """The repository lock mode an operation needs: exclusive for check and prune."""
    return "exclusive" if operation in EXCLUSIVE_OPERATIONS else "shared"


@dataclass(frozen=True)
class Ticket:
    """One job's place in the queue.

    The caller fills in what the job is; `Scheduler.submit` stamps the owner (pid and its
    start time, which guards against pid reuse), the arrival `sequence` and the state.
    """

    job_id: str
    repository: str
    priority: Priority
    mode: Mode = "shared"
    operation: str = "backup"
    backup: str | None = None
    pid: int = 0
    start_time: int = 0  # the owner's start in clock ticks since boot (/proc/PID/stat)
    sequence: int = 0  # arrival order, host-wide
    state: TicketState = "waiting"
    slot: int | None = None  # the slot held while running; None for immediate jobs
    queued_at: float = 0.0  # wall-clock time of arrival, for display only

    @property
    def needs_slot(self) -> bool:
        return self.priority.band != Priority.IMMEDIATE_BAND

    @property
    def on_idle(self) -> bool:
        return self.priority.band == Priority.ON_IDLE_BAND

    def to_json(self) -> bytes:
        # Not dataclasses.asdict: it deep-copies every member, for a ticket of flat values.
        data = {**vars(self), "priority": [self.priority.band, self.priority.value]}
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Ticket:
        """Parse a ticket file; raises ValueError (or a subclass) when it is not one, with
        every member of its own type."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not a ticket")
        band, value = data.pop("priority")
        ticket = cls(priority=Priority(int(band), int(value)), **data)
        if ticket.mode not in ("shared", "exclusive") or ticket.state not in ("waiting", "running"):
            raise ValueError("not a ticket")
        if ticket.priority.band not in range(Priority.ON_IDLE_BAND, Priority.IMMEDIATE_BAND + 1):
            raise ValueError("not a ticket: no such priority")
        if not all(check(getattr(ticket, name)) for name, check in _MEMBERS.items()):
            raise ValueError("not a ticket: a member of the wrong type")
        return ticket

    def running(self, slot: int | None) -> Ticket:
        return replace(self, state="running", slot=slot)


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_MEMBERS: dict[str, Callable[[object], bool]] = {
    "job_id": lambda value: isinstance(value, str) and JOB_ID.fullmatch(value) is not None,
    "repository": lambda value: isinstance(value, str),
    "operation": lambda value: isinstance(value, str),
    "backup": lambda value: value is None or isinstance(value, str),
    "pid": procs.is_pid,  # never 0 nor -1: the master may signal it
    "start_time": _is_integer,
    "sequence": _is_integer,
    "slot": lambda value: value is None or _is_integer(value),
    "queued_at": lambda value: _is_integer(value) or isinstance(value, float),
}


def order_key(ticket: Ticket) -> tuple[int, int, int]:
    """Sort key of the queue: greater priority first, then first come first served."""
    return (-ticket.priority.band, -ticket.priority.value, ticket.sequence)


def in_order(tickets: Iterable[Ticket]) -> list[Ticket]:
    """Waiting tickets in the order they will run (running ones excluded)."""
    return sorted((t for t in tickets if t.state == "waiting"), key=order_key)


def _compatible(claims: dict[str, Mode], ticket: Ticket) -> bool:
    """Whether `ticket` may share its repository with the claims of tickets ahead of it."""
    held = claims.get(ticket.repository)
    return held is None or (held == "shared" and ticket.mode == "shared")


def plan(
    waiting: Sequence[Ticket],
    free_slots: int,
    repository_free: Callable[[str, Mode], bool],
    alive: Callable[[Ticket], bool] = lambda _: True,
) -> tuple[list[Ticket], list[Ticket]]:
    """Which waiting tickets may start now, and which were found dead.

    `waiting` must be in queue order (`in_order`). Returns (starting, dead), both in queue
    order. Rules (henbackup.toml(5), PRIORITIES):
    - a ticket needs a free slot unless it is immediate, and its repository lock in its mode;
    - a ticket never overtakes one ahead of it on the same repository when either is
      exclusive (a waiting check blocks new backups there, and backups ahead block it);
    - a ticket stopped only by its repository lets later tickets on other repositories go
      (it does not hold a slot while it waits); a ticket without a slot stops all below it;
    - on-idle tickets start only when no other ticket is left waiting.
    Tickets are checked for life lazily: only those the decision depends on.
    """
    starting: list[Ticket] = []
    dead: list[Ticket] = []
    claims: dict[str, Mode] = {}
    others_wait = False
    for ticket in waiting:
        if ticket.needs_slot and free_slots <= 0:
            break  # every later ticket needs a slot too (immediates sort first)
        if ticket.on_idle and others_wait:
            break
        if not alive(ticket):
            dead.append(ticket)
            continue
        if _compatible(claims, ticket) and repository_free(ticket.repository, ticket.mode):
            starting.append(ticket)
            free_slots -= ticket.needs_slot
        elif not ticket.on_idle:
            others_wait = True
        claims[ticket.repository] = _merge(claims.get(ticket.repository), ticket.mode)
    return starting, dead


def _merge(held: Mode | None, mode: Mode) -> Mode:
    return "exclusive" if "exclusive" in (held, mode) else "shared"
