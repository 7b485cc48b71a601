"""What hooks report: the data the pipeline decides on. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from henbackup.config.model import OnFailure
from henbackup.observe.events import FieldValue

Status = Literal["succeeded", "failed", "skipped"]
Phase = Literal["before", "after", "failure"]

# borgmatic's convention: a hook exiting 75 (EX_TEMPFAIL) means "skip this run".
SKIP_EXIT_STATUS = 75


@dataclass(frozen=True)
class HookContext:
    """The run a hook belongs to: named in its events and in a command hook's environment."""

    backup: str
    phase: Phase
    job: str | None = None  # the id of the run (or of its first job), for events
    trigger: str | None = None
    error: str | None = None  # failure hooks: why the run failed (secret-free)
    host: str | None = None  # the daemon's hostname (restic --host)

    def environment(self) -> dict[str, str]:
        """HENBACKUP_* variables given to command hooks."""
        values = {
            "HENBACKUP_BACKUP": self.backup,
            "HENBACKUP_HOOK": self.phase,
            "HENBACKUP_JOB": self.job,
            "HENBACKUP_TRIGGER": self.trigger,
            "HENBACKUP_ERROR": self.error,
            "HENBACKUP_HOST": self.host,
        }
        return {name: value for name, value in values.items() if value is not None}

    def fields(self) -> dict[str, FieldValue]:
        """The event fields that identify the run and the phase."""
        return {"job": self.job, "backup": self.backup, "trigger": self.trigger, "hook": self.phase}

    def document(self) -> dict[str, str | None]:
        """The run as an HTTP hook's JSON body (`body = "json"`): every key, null if unknown."""
        return {
            "backup": self.backup,
            "hook": self.phase,
            "job": self.job,
            "trigger": self.trigger,
            "error": self.error,
            "host": self.host,
        }


@dataclass(frozen=True)
class Attempt:
    """What running one hook gave, before events: status, reason and (raw) output."""

    status: Status
    error: str | None = None  # one line, secret-free
    output: bytes = b""  # the tail of the output
    truncated: bool = False  # the output had more before `output`
    fields: dict[str, FieldValue] = field(default_factory=dict)  # exit_status, http_status...


@dataclass(frozen=True)
class HookOutcome:
    """One hook's result as the pipeline sees it."""

    status: Status
    on_failure: OnFailure
    description: str  # "command pg_dump", "POST https://host/path" (secrets redacted)
    error: str | None = None
    output: str = ""  # truncated, secrets redacted

    @property
    def counts_as_failure(self) -> bool:
        """Whether this outcome marks the run failed (`ignore` hooks never do)."""
        return self.status == "failed" and self.on_failure != "ignore"


@dataclass(frozen=True)
class Verdict:
    """The result of one phase of hooks (`run_hooks`), in the order they ran.

    - `failed`: a hook failed with on_failure continue or stop: the run is marked failed;
    - `stop`: a hook failed with on_failure stop: the run stops here, failure hooks run;
    - `skip`: a command hook exited 75: the run stops here, and it is not a failure.
    Hooks after a stop or a skip did not run.
    """

    outcomes: tuple[HookOutcome, ...] = ()

    @property
    def failed(self) -> bool:
        return any(outcome.counts_as_failure for outcome in self.outcomes)

    @property
    def stop(self) -> bool:
        return any(o.counts_as_failure and o.on_failure == "stop" for o in self.outcomes)

    @property
    def skip(self) -> bool:
        return any(outcome.status == "skipped" for outcome in self.outcomes)

    @property
    def error(self) -> str | None:
        """The first failure's reason, for the run's failure event and failure hooks."""
        for outcome in self.outcomes:
            if outcome.counts_as_failure:
                return f"{outcome.description}: {outcome.error}"
        return None
