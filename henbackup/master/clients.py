"""henbackupctl clients waiting for their jobs: each gets the job events of its request as
they come, then one reply when the run is over."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from henbackup.master.control import Conversation
from henbackup.master.permissions import Privilege
from henbackup.protocol import ControlReply, reply_error

# What only root's clients are sent of an event: a hook's output is what root's commands
# printed (a dump's errors, a token); members read it in the journal, given journal rights.
ROOTS_ONLY = frozenset({"output"})


@dataclass
class Waiting:
    conversation: Conversation
    owner: str  # the process that runs the request: a worker's key or a one-off's id
    errors: list[str] = field(default_factory=list)  # why its jobs failed, as they did
    jobs: list[dict[str, Any]] = field(default_factory=list)  # each job's end


class Clients:
    def __init__(self) -> None:
        self.waiting: dict[str, Waiting] = {}  # by request id

    def add(self, request: str, conversation: Conversation, owner: str) -> None:
        """Keep `conversation` for `request`'s events and reply; its first line, at once,
        says it waits: henbackupctl gives a daemon that never answers 30 s, and the
        request's first event may be hours away (its repository locked, a run before it)."""
        self.waiting[request] = Waiting(conversation, owner)
        conversation.on_close.append(lambda: self.waiting.pop(request, None))
        conversation.send({"waiting": request})

    def event(
        self, requests: Iterable[str], kind: str, message: str, fields: Mapping[str, Any]
    ) -> None:
        """Pass a job or hook event to the clients waiting for it."""
        for request in requests:
            waiting = self.waiting.get(request)
            if waiting is None:
                continue
            shown = fields
            if waiting.conversation.peer.privilege is not Privilege.OWN:
                shown = {name: value for name, value in fields.items() if name not in ROOTS_ONLY}
            waiting.conversation.send({"event": {"kind": kind, "message": message, **shown}})
            if kind in ("job.succeeded", "job.failed", "job.cancelled"):
                waiting.jobs.append(_ended(kind, fields))
            reason = "cancelled" if kind == "job.cancelled" else fields.get("error")
            if kind in ("job.failed", "job.cancelled", "hook.failed") and reason:
                title = "→".join(str(fields[k]) for k in ("backup", "repository") if fields.get(k))
                waiting.errors.append(f"{title or kind}: {reason}")

    def finish(self, request: str, reply: ControlReply) -> None:
        """End the request's wait with `reply`, completed with its jobs and their errors."""
        waiting = self.waiting.pop(request, None)
        if waiting is None:
            return
        if not reply.get("ok") and not reply.get("error"):
            reply = {**reply, "error": "; ".join(waiting.errors) or "the job failed"}
        waiting.conversation.finish({**reply, "jobs": waiting.jobs})

    def accepted(self, request: str, operation: str) -> None:
        """End the request's wait as --no-wait is answered: its run comes, not followed."""
        waiting = self.waiting.pop(request, None)
        if waiting is not None:
            waiting.conversation.finish({"ok": True, "request": request, "accepted": operation})

    def owner_gone(self, owner: str, reason: str) -> None:
        """The process running these requests ended without answering them."""
        for request in [r for r, w in self.waiting.items() if w.owner == owner]:
            self.finish(request, reply_error("failed", reason))


def _ended(kind: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("job", "operation", "backup", "repository", "snapshot", "duration_sec", "error")
    return {"result": kind.removeprefix("job."), **{k: fields.get(k) for k in keep}}
