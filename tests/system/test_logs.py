"""`henbackupctl logs` against a real journald: filters, -n, --json, -f, and who may read."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from user_manager import SystemdHarness

# The checkout's virtual environment, found as test_service.py finds it.
PYTHON = sys.executable
HENBACKUPCTL = str(Path(sys.executable).parent / "henbackupctl")
# +05:30 while the host runs in UTC: a time printed in the wrong zone cannot pass.
ZONE = "Asia/Kolkata"
SEND = (
    "import json, sys\n"
    "from systemd import journal\n"
    "for fields in json.load(sys.stdin): journal.send(**fields)"
)
JOURNAL_GROUP = 999  # any gid stands for systemd-journal here: only the file modes matter


def event(kind: str, message: str, priority: int = 6, **fields: str) -> dict[str, str]:
    """The fields of one journal entry as the daemon writes it (henbackup(8), EVENTS)."""
    extra = {f"HENBACKUP_{name.upper()}": value for name, value in fields.items()}
    return {
        "MESSAGE": message,
        "PRIORITY": str(priority),
        "SYSLOG_IDENTIFIER": "henbackup",
        "HENBACKUP_EVENT": kind,
        **extra,
    }


J1 = {"job": "j1", "backup": "pictures", "repository": "aws", "operation": "backup"}
J2 = {"job": "j2", "backup": "pictures", "repository": "local", "operation": "backup"}
J3 = {"job": "j3", "backup": "grafana", "repository": "aws", "operation": "backup"}
OURS = [
    event("daemon.started", "henbackup started: 2 backups", 5),
    event("job.started", "pictures → aws: backup started", **J1),
    event("job.started", "pictures → local: backup started", **J2),
    event(
        "job.succeeded",
        "pictures → aws: backup succeeded, snapshot 1a2b3c4d",
        **J1,
        snapshot="1a2b3c4d",
        duration_sec="2.500",
    ),
    event(
        "job.failed",
        "pictures → local: backup failed: repository local is locked by another process",
        3,
        **J2,
        duration_sec="0.310",
        error="repository local is locked by another process",
    ),
    # What the daemon writes to stderr reaches the journal with its identifier, no event.
    {"MESSAGE": "Traceback (most recent call last):", "SYSLOG_IDENTIFIER": "henbackup"},
    event("job.started", "grafana → aws: backup started", **J3),
]
# Matches every filter but comes from another program: logs must never show it.
STRANGER = {**event("job.started", "not henbackup's", **J1), "SYSLOG_IDENTIFIER": "henbackupx"}


def send(harness: SystemdHarness, entries: list[dict[str, str]]) -> None:
    """Write `entries` into the harness's journald, in order, from one process."""
    harness.run([PYTHON, "-c", SEND], input=json.dumps(entries), check=True)


def ctl(harness: SystemdHarness, *args: str) -> subprocess.CompletedProcess[str]:
    """`henbackupctl ARGS` inside the namespace, in ZONE."""
    return harness.run([HENBACKUPCTL, *args], env={"TZ": ZONE})


def local(entry: dict[str, str]) -> datetime:
    """The entry's journald receive time, in ZONE, to the microsecond."""
    usec = int(entry["__REALTIME_TIMESTAMP"])
    moment = datetime.fromtimestamp(usec // 1_000_000, ZoneInfo(ZONE))
    return moment.replace(microsecond=usec % 1_000_000)


def line(entry: dict[str, str]) -> str:
    """The human line expected for an entry as `journalctl -o json` gives it."""
    kind = entry.get("HENBACKUP_EVENT", "-")
    return f"{local(entry):%Y-%m-%d %H:%M:%S} {kind:<15} {entry['MESSAGE']}"


@pytest.fixture
def written(systemd_harness: SystemdHarness) -> list[dict[str, str]]:
    """OURS (and STRANGER) in the journal; returns OURS as journalctl shows them, oldest first."""
    send(systemd_harness, [*OURS[:3], STRANGER, *OURS[3:]])
    systemd_harness.wait_journal({"SYSLOG_IDENTIFIER": STRANGER["SYSLOG_IDENTIFIER"]})
    found = systemd_harness.wait_journal({"SYSLOG_IDENTIFIER": "henbackup"}, count=len(OURS))
    assert [entry["MESSAGE"] for entry in found] == [entry["MESSAGE"] for entry in OURS]
    return found


def lines_of(written: list[dict[str, str]], *indexes: int) -> str:
    """The expected output: the lines of these entries of OURS."""
    return "".join(line(written[index]) + "\n" for index in indexes)


def test_every_henbackup_entry_oldest_first_and_nothing_else(
    systemd_harness: SystemdHarness, written: list[dict[str, str]]
) -> None:
    done = ctl(systemd_harness, "logs")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == lines_of(written, *range(len(OURS)))
    assert "not henbackup's" not in done.stdout
    assert re.match(
        r"20\d\d-\d\d-\d\d \d\d:\d\d:\d\d daemon\.started  henbackup started", done.stdout
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-b", "pictures"], (1, 2, 3, 4)),
        (["--backup", "grafana"], (6,)),
        (["-r", "aws"], (1, 3, 6)),
        (["--job", "j2"], (2, 4)),
        (["-b", "pictures", "-r", "aws"], (1, 3)),  # both must match, not either
        (["-b", "pictures", "-r", "local", "--job", "j2"], (2, 4)),
        (["-b", "grafana", "--job", "j1"], ()),
        (["-b", "music"], ()),
        (["-n", "2"], (5, 6)),
        (["--lines", "1"], (6,)),
        (["-n", "2", "-b", "pictures"], (3, 4)),
        (["-n", "100"], tuple(range(len(OURS)))),
        (["-n", "3", "--job", "j1"], (1, 3)),
        (["-n", "0"], ()),
    ],
)
def test_filters_and_the_last_n(
    systemd_harness: SystemdHarness,
    written: list[dict[str, str]],
    args: list[str],
    expected: tuple[int, ...],
) -> None:
    done = ctl(systemd_harness, "logs", *args)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == lines_of(written, *expected)


def test_a_failed_job_says_why(
    systemd_harness: SystemdHarness, written: list[dict[str, str]]
) -> None:
    done = ctl(systemd_harness, "logs", "--job", "j2")
    failed = done.stdout.splitlines()[-1]
    assert " job.failed " in failed
    assert failed.endswith("backup failed: repository local is locked by another process")


def test_a_negative_count_is_a_usage_error(
    systemd_harness: SystemdHarness, written: list[dict[str, str]]
) -> None:
    done = ctl(systemd_harness, "logs", "-n", "-1")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "henbackupctl: -n must be 0 or more\n"


@pytest.mark.parametrize("where", ["before", "after"])
def test_json_lines(
    systemd_harness: SystemdHarness, written: list[dict[str, str]], where: str
) -> None:
    args = ["--json", "logs", "-b", "pictures"] if where == "before" else ["logs", "--json"]
    done = ctl(systemd_harness, *args, "--job", "j2")
    assert (done.returncode, done.stderr) == (0, "")
    started, failed = written[2], written[4]
    assert [json.loads(text) for text in done.stdout.splitlines()] == [
        {
            "time": local(started).isoformat(timespec="microseconds"),
            "event": "job.started",
            "message": "pictures → local: backup started",
            "priority": 6,
            "backup": "pictures",
            "job": "j2",
            "operation": "backup",
            "repository": "local",
        },
        {
            "time": local(failed).isoformat(timespec="microseconds"),
            "event": "job.failed",
            "message": "pictures → local: backup failed: "
            "repository local is locked by another process",
            "priority": 3,
            "backup": "pictures",
            "duration_sec": "0.310",
            "error": "repository local is locked by another process",
            "job": "j2",
            "operation": "backup",
            "repository": "local",
        },
    ]
    assert "+05:30" in done.stdout


def test_json_of_an_entry_without_an_event(
    systemd_harness: SystemdHarness, written: list[dict[str, str]]
) -> None:
    done = ctl(systemd_harness, "--json", "logs", "-n", "2")
    produced = [json.loads(text) for text in done.stdout.splitlines()]
    assert produced[0] == {
        "time": local(written[5]).isoformat(timespec="microseconds"),
        "event": None,
        "message": "Traceback (most recent call last):",
        "priority": 6,  # journal.send() without PRIORITY: syslog's default, info
    }
    assert produced[1]["event"] == "job.started"


NO_ENTRIES = (
    "henbackupctl: no henbackup events in the journal yet: is the daemon running? "
    "(systemctl status henbackup)\n"
)


def test_a_journal_without_henbackup_entries_says_so(systemd_harness: SystemdHarness) -> None:
    send(systemd_harness, [STRANGER])
    systemd_harness.wait_journal({"SYSLOG_IDENTIFIER": STRANGER["SYSLOG_IDENTIFIER"]})
    for args in (["logs"], ["--json", "logs"], ["logs", "-n", "5"]):
        done = ctl(systemd_harness, *args)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", NO_ENTRIES)
    # Asked for nothing, or for what does not match: nothing to say.
    quiet = (["logs", "-n", "0"], ["logs", "-b", "pictures"], ["--json", "logs", "--job", "j1"])
    for args in quiet:
        done = ctl(systemd_harness, *args)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_a_journal_without_henbackup_entries_says_so_then_follows(
    systemd_harness: SystemdHarness,
) -> None:
    send(systemd_harness, [STRANGER])
    systemd_harness.wait_journal({"SYSLOG_IDENTIFIER": STRANGER["SYSLOG_IDENTIFIER"]})
    with following(systemd_harness) as follower:
        follower.wait_said(NO_ENTRIES)  # the backlog is read: what comes now is followed
        send(systemd_harness, [OURS[4]])
        (new,) = systemd_harness.wait_journal({"HENBACKUP_EVENT": "job.failed"})
        assert follower.wait_lines(1) == [line(new)]
        assert follower.stop(signal.SIGINT) == (0, NO_ENTRIES)


# -- no journal on this machine ------------------------------------------------------------

NO_JOURNAL = (
    "henbackupctl: no journal on this machine: no journal files in /run/log/journal or "
    "/var/log/journal (systemd-journald does not run here, as in many containers; henbackup "
    "then writes its events on its standard error)\n"
)


@pytest.mark.parametrize(
    "machine",
    [
        "",  # neither directory exists
        "mkdir /var/log/journal /run/log/journal",  # journald never ran (Storage=auto, as here)
    ],
)
def test_without_a_journal_root_is_told_there_is_none_not_blamed(machine: str) -> None:
    # A machine without a journal: a private mount namespace (unshare -m) with empty tmpfs
    # over /run/log and /var/log, so the real sd_journal_open finds nothing there. As root,
    # which used to be told to "run as root".
    shell = (
        "mount -t tmpfs tmpfs /run/log && mount -t tmpfs tmpfs /var/log && "
        f'{machine or "true"} && exec "$0" logs'
    )
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", shell, HENBACKUPCTL],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (1, "", NO_JOURNAL)


# -- who may read --------------------------------------------------------------------------


def as_nobody(*groups: int) -> list[str]:
    """A setpriv prefix: run as nobody, with only these supplementary groups."""
    supplementary = f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups"
    return ["setpriv", "--reuid=65534", "--regid=65534", supplementary]


@pytest.mark.parametrize(
    ("closing", "denied"),
    [
        ("true", r"/run/log/journal/[0-9a-f]{32}"),  # journald's own modes: 0750 root:root
        ("chmod 0700 /run/log/journal", r"/run/log/journal"),
    ],
)
def test_a_user_who_may_not_read_the_journal_is_told_how_to_fix_it(
    systemd_harness: SystemdHarness, written: list[dict[str, str]], closing: str, denied: str
) -> None:
    systemd_harness.run(["sh", "-c", closing], check=True)
    done = systemd_harness.run([*as_nobody(), HENBACKUPCTL, "logs"])
    assert (done.returncode, done.stdout) == (1, "")
    assert re.fullmatch(
        rf"henbackupctl: cannot read the journal: permission denied: {denied}"
        r" \(run as root or as a member of systemd-journal or adm\)\n",
        done.stderr,
    ), done.stderr


def test_an_entry_another_user_wrote_in_henbackup_s_name_is_not_shown(
    systemd_harness: SystemdHarness, written: list[dict[str, str]]
) -> None:
    """Any user may write entries with henbackup's identifier and fields (logger
    --journald, systemd-cat): a forged "succeeded" must not pass for the daemon's."""
    forged = event("job.succeeded", "pictures → aws: forged by nobody", **J1)
    sender = [*as_nobody(), PYTHON, "-I", "-c", SEND]  # -I: the working directory is not its
    systemd_harness.run(sender, input=json.dumps([forged]), check=True)
    (entry,) = systemd_harness.wait_journal({"MESSAGE": forged["MESSAGE"]})
    assert entry["_UID"] == "65534" and entry["SYSLOG_IDENTIFIER"] == "henbackup"
    done = ctl(systemd_harness, "logs")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == lines_of(written, *range(len(OURS)))


def test_a_member_of_the_journal_group_may_read_it(
    systemd_harness: SystemdHarness, written: list[dict[str, str]]
) -> None:
    # What systemd-tmpfiles does on a real host: the journal readable by a group.
    grant = f"chgrp -R {JOURNAL_GROUP} /run/log/journal && chmod -R g+rX /run/log/journal"
    systemd_harness.run(["sh", "-c", grant], check=True)
    done = systemd_harness.run(
        [*as_nobody(JOURNAL_GROUP), HENBACKUPCTL, "logs", "-b", "grafana"], env={"TZ": ZONE}
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == lines_of(written, 6)


# -- following -----------------------------------------------------------------------------


# How a follower may find SIGINT when it starts: as a terminal leaves it, or ignored, as a
# shell script leaves it for its background jobs (and some CI runners for every command).
SIGINT_DISPOSITIONS = {"default": [], "ignored": ["sh", "-c", "trap '' INT; exec \"$@\"", "sh"]}


class Follower:
    """A `henbackupctl logs -f` running in the background inside the namespace."""

    def __init__(self, harness: SystemdHarness, *args: str, sigint: str = "default") -> None:
        self.harness = harness
        # The harness's own way in (see SystemdHarness.run), without waiting for the end.
        command = ["nsenter", f"--mount=/proc/self/fd/{harness.ns_fd}", f"--wd={harness.workdir}"]
        command += ["--", *SIGINT_DISPOSITIONS[sigint]]
        self.process = subprocess.Popen(
            [*command, HENBACKUPCTL, *args],
            env={**harness.env, "TZ": ZONE},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(harness.ns_fd,),
        )
        assert self.process.stdout is not None
        os.set_blocking(self.process.stdout.fileno(), False)
        self.output = b""
        self.said = b""  # stderr, read while it runs only by `wait_said`

    def lines(self) -> list[str]:
        """Every complete line printed so far."""
        assert self.process.stdout is not None
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.process.stdout.fileno(), 65536):
                self.output += chunk
        return self.output.decode().split("\n")[:-1]

    def wait_said(self, text: str) -> None:
        """Poll until stderr holds `text` (the rest is read by `ended`)."""
        assert self.process.stderr is not None
        os.set_blocking(self.process.stderr.fileno(), False)

        def said() -> bool:
            with contextlib.suppress(BlockingIOError):
                while chunk := os.read(self.process.stderr.fileno(), 65536):
                    self.said += chunk
            return text in self.said.decode()

        self.harness.wait_for(said, 10, lambda: f"{text!r} on stderr, got {self.said!r}")
        os.set_blocking(self.process.stderr.fileno(), True)

    def wait_lines(self, count: int) -> list[str]:
        """Poll until at least `count` lines were printed; returns them all."""
        return self.harness.wait_for(
            lambda: len(self.lines()) >= count and self.lines(),
            10,
            lambda: f"{count} lines from logs -f, got {self.lines()}",
        )

    def stop(self, signum: int) -> tuple[int, str]:
        """Send `signum`, wait for the end; returns the exit status and what went to stderr."""
        self.process.send_signal(signum)
        return self.ended()

    def ended(self) -> tuple[int, str]:
        """Wait for the process to end by itself; returns its exit status and stderr."""
        assert self.process.stderr is not None
        status = self.process.wait(timeout=10)
        return status, (self.said + self.process.stderr.read()).decode()

    def kill(self) -> None:
        """Make sure nothing is left running in the namespace (the harness checks)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream:
                stream.close()


@contextlib.contextmanager
def following(harness: SystemdHarness, *args: str, sigint: str = "default") -> Iterator[Follower]:
    follower = Follower(harness, "logs", "-f", *args, sigint=sigint)
    try:
        yield follower
    finally:
        follower.kill()


def progress(count: int, **fields: Any) -> list[dict[str, str]]:
    return [
        event("job.progress", f"pictures → aws: backup {n}%", **{**J1, **fields})
        for n in range(1, count + 1)
    ]


@pytest.mark.parametrize("sigint", sorted(SIGINT_DISPOSITIONS))
def test_follow_shows_the_last_ten_then_new_entries_until_ctrl_c(
    systemd_harness: SystemdHarness, sigint: str
) -> None:
    send(systemd_harness, [*progress(12), STRANGER])
    old = systemd_harness.wait_journal({"SYSLOG_IDENTIFIER": "henbackup"}, count=12)
    systemd_harness.wait_journal({"SYSLOG_IDENTIFIER": STRANGER["SYSLOG_IDENTIFIER"]})
    with following(systemd_harness, sigint=sigint) as follower:
        assert follower.wait_lines(10) == [line(entry) for entry in old[2:]]
        send(systemd_harness, [STRANGER, OURS[4]])
        (new,) = systemd_harness.wait_journal({"HENBACKUP_EVENT": "job.failed"})
        assert follower.wait_lines(11)[10:] == [line(new)]
        assert follower.stop(signal.SIGINT) == (0, "")  # Ctrl-C: no traceback
        assert follower.lines()[10:] == [line(new)]  # and the stranger never showed


@pytest.mark.parametrize("sigint", sorted(SIGINT_DISPOSITIONS))
def test_follow_with_filters_and_n_in_json(systemd_harness: SystemdHarness, sigint: str) -> None:
    send(systemd_harness, [*progress(3, job="j2"), OURS[1]])
    systemd_harness.wait_journal({"SYSLOG_IDENTIFIER": "henbackup"}, count=4)
    args = ("-n", "1", "--job", "j2", "--json")
    with following(systemd_harness, *args, sigint=sigint) as follower:
        (last,) = follower.wait_lines(1)  # the newest of j2's, not j1's after it
        assert (json.loads(last)["message"], json.loads(last)["job"]) == (
            "pictures → aws: backup 3%",
            "j2",
        )
        send(systemd_harness, [OURS[1], OURS[4]])
        systemd_harness.wait_journal({"HENBACKUP_EVENT": "job.failed"})
        produced = json.loads(follower.wait_lines(2)[1])
        assert (produced["event"], produced["job"], produced["priority"]) == ("job.failed", "j2", 3)
        assert follower.stop(signal.SIGINT) == (0, "")
        assert len(follower.lines()) == 2


def test_follow_ends_quietly_when_its_reader_goes_away(systemd_harness: SystemdHarness) -> None:
    send(systemd_harness, progress(1))
    systemd_harness.wait_journal({"SYSLOG_IDENTIFIER": "henbackup"})
    with following(systemd_harness, "-n", "1") as follower:
        follower.wait_lines(1)  # it is reading: the next entry will be written to the pipe
        assert follower.process.stdout is not None
        follower.process.stdout.close()  # like `henbackupctl logs -f | head -1`
        send(systemd_harness, progress(2)[1:])
        assert follower.ended() == (0, "")
