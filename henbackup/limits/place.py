"""A job run under its limits: the leaf, the programs entering it, what the events say.

`placed` is used by a job process around its whole run. Every program it spawns enters
the run's cgroup leaf and gets its nice and ionice before exec; the job events gain the
limits and, at the end of each job, what its programs used; a job whose program the kernel
killed for memory_max fails with that reason.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from henbackup.config.model import Config, Resources
from henbackup.limits import cgroups, mapping, nice
from henbackup.limits.cgroups import Host, Leaf, Usage
from henbackup.observe.events import EmitFunction, Event, FieldValue
from henbackup.process import set_program_setup

ENDINGS = ("job.succeeded", "job.failed", "job.cancelled")


def short_size(count: int) -> str:
    """A size as written in the config: 268435456 → "256M"."""
    for unit, factor in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if count >= factor and count % factor == 0:
            return f"{count // factor}{unit}"
    return str(count)


def describe(resources: Resources) -> str:
    """`cpu_weight=20 memory_max=256M ionice=idle`: the keys that are set."""
    shown = {
        **vars(resources),
        "cpu_quota": resources.cpu_quota and f"{resources.cpu_quota * 100:g}%",
        "memory_max": resources.memory_max and short_size(resources.memory_max),
    }
    return " ".join(f"{key}={value}" for key, value in shown.items() if value is not None)


def problems(resources: Resources, host: Host) -> dict[str, str]:
    """Key → why this host cannot apply it, for every key of `resources` that is set."""
    found: dict[str, str] = {}
    controllers = mapping.V2_CONTROLLER if host.layout == "v2" else mapping.V1_CONTROLLER
    for key in mapping.CGROUP_KEYS:
        if getattr(resources, key) is None:
            continue
        controller = controllers[key]
        if controller not in host.controllers():
            found[key] = host.missing.get(controller, f"no {controller} controller")
    root = os.geteuid() == 0
    if resources.nice is not None and resources.nice < 0 and not root:
        found["nice"] = "a negative nice needs root"
    if resources.ionice == "realtime" and not root:
        found["ionice"] = "the realtime I/O class needs root"
    elif resources.ionice is not None and not nice.ioprio_supported():
        found["ionice"] = "ioprio_set is unknown on this machine"
    return found


def config_problems(config: Config, host: Host) -> list[tuple[str, str, str, str]]:
    """(backup or repository, its name, key, reason) for every limit of `config` this host
    cannot apply."""
    owners = [
        *(("backup", backup) for backup in config.backups.values()),
        *(("repository", repository) for repository in config.repositories.values()),
    ]
    return [
        (kind, owner.name, key, reason)
        for kind, owner in owners
        for key, reason in problems(owner.resources, host).items()
    ]


def say_unavailable(emit: EmitFunction, kind: str, owner: str, key: str, reason: str) -> None:
    """The limits.unavailable warning: `kind` is backup or repository, the event's field."""
    fields: dict[str, FieldValue] = {kind: owner, "key": key, "error": reason}
    emit("limits.unavailable", f"{owner}: {key} cannot be applied: {reason}", **fields)


def honoured(resources: Resources, host: Host) -> str:
    """For check-config: how each set key is applied here (`cpu_weight: cpu.shares 204`)."""
    values = mapping.v2_values(resources) if host.layout == "v2" else mapping.v1_values(resources)
    missing = problems(resources, host)
    parts = []
    for key, files in values.items():
        how = ", ".join(f"{file} {value}" for file, value in files.items())
        parts.append(f"{key}: " + (f"not here ({missing[key]})" if key in missing else how))
    for key in ("nice", "ionice"):
        if getattr(resources, key) is not None:
            parts.append(f"{key}: " + (f"not here ({missing[key]})" if key in missing else "yes"))
    return "; ".join(parts)


def host_report(config: Config, host: Host) -> str:
    """check-config's block: which limits this host can honour, per backup and repository."""
    owners = [*config.backups.values(), *config.repositories.values()]
    rows = [
        f"  {owner.name}: {honoured(owner.resources, host)}"
        for owner in owners
        if owner.resources != Resources()
    ]
    if not rows:
        return ""
    return "\n".join([f"Limits on this host (cgroup layout: {host.layout})", *rows])


@dataclass
class Placement:
    """One job run's limits: its leaf (None without cgroups) and what the jobs measured."""

    owner: str  # the backup (or repository) whose limits these are
    resources: Resources
    send: EmitFunction  # where the job events go, once `emit` has added to them
    leaf: Leaf | None = None
    _started: dict[str, tuple[Usage, int]] = field(default_factory=dict)
    _reasons: dict[str, str] = field(default_factory=dict)  # engine's error → the limit's

    def enter_program(self) -> None:
        """In a program's child, before exec: the leaf, nice, ionice. What fails was said
        at start (limits.unavailable): the program runs without that limit."""
        with contextlib.suppress(OSError):
            if self.leaf is not None:
                self.leaf.enter()
        with contextlib.suppress(OSError):
            if self.resources.nice is not None:
                nice.set_nice(self.resources.nice)
        with contextlib.suppress(OSError):
            value = mapping.ioprio(self.resources)
            if value is not None:
                nice.set_ioprio(value)

    def emit(self, kind: str, message: str, **fields: FieldValue) -> Event:
        """The jobs' emit function: job events gain the limits and, at their end, the usage
        and the memory limit's reason."""
        if self.resources == Resources():
            return self.send(kind, message, **fields)
        job = str(fields.get("job"))
        if kind == "job.started" and self.leaf is not None:
            self.leaf.reset_peak()
            self._started[job] = (self.leaf.usage(), self.leaf.oom_kills())
        if kind == "job.started" or kind in ENDINGS:
            fields["limits"] = describe(self.resources)
        if kind in ENDINGS and job in self._started:
            message, fields = self._ended(kind, message, fields, *self._started.pop(job))
        return self.send(kind, message, **fields)

    def _ended(
        self, kind: str, message: str, fields: dict[str, FieldValue], before: Usage, kills: int
    ) -> tuple[str, dict[str, FieldValue]]:
        assert self.leaf is not None
        now = self.leaf.usage()
        fields.update(
            cpu_sec=_delta(now.cpu_sec, before.cpu_sec),
            memory_peak=now.memory_peak,
            read_bytes=_delta(now.read_bytes, before.read_bytes),
            written_bytes=_delta(now.written_bytes, before.written_bytes),
        )
        if kind == "job.failed" and self.leaf.oom_kills() > kills:
            reason = (
                f"restic was killed by the memory limit of {self.owner} "
                f"(memory_max = {short_size(self.resources.memory_max or 0)})"
            )
            message = message.partition(" failed: ")[0] + " failed: " + reason
            self._reasons[str(fields.get("error"))] = reason
            fields["error"] = reason
        return message, fields

    def explain(self, error: str | None) -> str | None:
        """A job's error as its job.failed event told it (the memory limit's reason)."""
        return self._reasons.get(error, error) if error else error


def _delta(now: float | None, before: float | None) -> float | None:
    if now is None or before is None:
        return now
    return round(now - before, 3) if isinstance(now, float) else now - before


@contextlib.contextmanager
def placed(
    owner: str, resources: Resources, emit: EmitFunction, kind: str = "backup"
) -> Iterator[Placement]:
    """Run the body with this process's programs under the `resources` of `owner` (a
    backup, or a repository for its check and prune); yields the Placement, whose `emit`
    the jobs use. The leaf is removed at the end."""
    if resources == Resources():
        yield Placement(owner, resources, emit)
        return
    host = cgroups.detect()
    values = mapping.v2_values(resources) if host.layout == "v2" else mapping.v1_values(resources)
    wanted = {k: v for k, v in values.items() if k not in problems(resources, host)}
    leaf, failed = cgroups.make_leaf(host, f"job-{os.getpid()}", wanted) if wanted else (None, {})
    for key, reason in failed.items():  # rare: the start-time check passed
        say_unavailable(emit, kind, owner, key, reason)
    placement = Placement(owner, resources, emit, leaf)
    procs = mapping.gomaxprocs(resources)
    if procs is not None and "cpu_quota" in wanted and "GOMAXPROCS" not in os.environ:
        os.environ["GOMAXPROCS"] = str(procs)
    set_program_setup(placement.enter_program)
    try:
        yield placement
    finally:
        set_program_setup(None)
        if leaf is not None:
            leaf.remove()
