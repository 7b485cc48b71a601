"""BorgBackup 1.2 behind the Engine contract: the only module that knows borg's CLI and output.

A backup's snapshots are its archives, named `BACKUP@HOST@TIME` (a backup or host name
never holds "@"), so that `--glob-archives 'BACKUP@HOST@*'` scopes listing and retention to
one backup of one host, as the `backup-<name>` tag and --host scope them for restic. The
archive's comment holds the backed-up paths (borg keeps them nowhere else).

borg runs with `--log-json`: its stderr is followed line by line (progress, files, log
messages with a msgid that classifies failures), its stdout (the `--json` result) goes to
a file. The repository location travels in BORG_REPO and the password through an inherited
pipe (BORG_PASSPHRASE_FD) or a command (BORG_PASSCOMMAND), never in argv; messages are
redacted of the location, the password and the target's env values.

borg counts what it has read, never a total: a backup's total (its percent, the time left)
comes from borg's own dry run of the same walk beside it (scan_args; sidecar.py runs it,
borg_scan.py adds up what it lists), as restic's scanner gives restic's.

Versions: borg 1.2 to 1.4 (one command line); `borg --version` is asked once per binary
(engine/versions.py) and any other refused before the first command, in one line.

Over ssh (`ssh://USER@HOST[:PORT]/PATH`), borg runs the ssh command of BORG_RSH from the
repository's env (key, known_hosts, port), and ssh's refusals come back as "Remote:" lines.

Locks: borg removes a stale lock itself when its holder is a dead process of this host
(BORG_HOSTNAME_IS_UNIQUE=yes), never a live one; `unlock_stale` asks borg to do just that.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import re
import shlex
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from henbackup.config.model import STALL_TIMEOUT, PasswordSource, Retention
from henbackup.engine.base import (
    BackupRequest,
    BackupResult,
    Checkpoint,
    CheckResult,
    ForgetResult,
    ProgressCallback,
    RepositoryStats,
    RestoreResult,
    Snapshot,
    SpawnCallback,
    StallCallback,
    Target,
    TransferProgress,
    plain_include,
)
from henbackup.engine.borg_scan import ScanTotal
from henbackup.engine.run import (
    ToolEngine,
    ToolResult,
    count_files,
    finite,
    limit_warnings,
    parse_json_line,
    password_pipe,
    read_whole,
    restored_roots,
    secrets_of,
)
from henbackup.engine.secret_env import with_secret_env
from henbackup.engine.sidecar import Sidecar
from henbackup.engine.transfer import estimate, finished
from henbackup.engine.versions import version_text
from henbackup.errors import (
    AccessRefused,
    BackendUnreachable,
    EngineError,
    RepositoryLocked,
    RepositoryMissing,
    SnapshotNotFound,
    WrongPassword,
)
from henbackup.files import read_record, write_atomically
from henbackup.names import snapshot_tag
from henbackup.redact import Redactor

Argv = tuple[str, ...]

SEPARATOR = "@"  # between backup, host and time in an archive name
# How long a backup's scan (borg_scan.py) may go on once borg has ended (a stop waits that
# long at most): the scan walks what borg walked, doing less, so it is all but always done
# first.
SCAN_GRACE = 5.0
# Exit codes of borg 1.2: 1 is a warning (e.g. a source path that does not exist).
EXIT_WARNING = 1
KEPT_LINES, KEPT_LAST = 10_000, 100  # of borg's log lines: its first ones, and its last

# borg's msgid → the error it means.
_MISSING = {
    "Repository.DoesNotExist",
    "Repository.InvalidRepository",
    "Repository.ParentPathDoesNotExist",
}
_WRONG_PASSWORD = {"PassphraseWrong", "PasswordRetriesExceeded"}
_LOCKED = {"LockTimeout", "LockFailed", "LockError", "NotLocked", "NotMyLock"}
_UNREACHABLE = {
    "ConnectionClosed",
    "ConnectionClosedWithHint",
    "RemoteRepository.RPCServerOutdated",
}
_NO_ARCHIVE = {"Archive.DoesNotExist"}
_UNREACHABLE_WORDS = ("connection closed by remote host", "connection refused", "ssh: ")
# What ssh says (borg forwards it as "Remote: ...") when the server refuses who we are, or
# is not the one known_hosts knows: retrying cannot help.
_REMOTE = "Remote: "
_SSH_REFUSED = "permission denied ("
_SSH_HOST_KEY = ("host key verification failed", "remote host identification has changed")
_SSH_ADVICE = "check the user and key its ssh logs in with (BORG_RSH in its env, or ~/.ssh/config)"
# borg's own line when ssh ended before borg answered, and what it means.
_CLOSED = "connection closed by remote host"
_CLOSED_MEANING = (
    "ssh opened no borg session: check that the server is up, has borg on its PATH and"
    " accepts the user, key and host key its ssh uses"
)

# Our own environment's borg settings are not the repository's; of the target's, those that
# would override what the engine says (repository, password) go.
_INHERITED_PREFIX = "BORG_"
_OVERRIDDEN_VARS = frozenset(
    {
        "BORG_REPO",
        "BORG_PASSPHRASE",
        "BORG_PASSPHRASE_FD",
        "BORG_PASSCOMMAND",
        "BORG_NEW_PASSPHRASE",
    }
)
_RESTIC_TO_BORG_UNITS = {"h": "H", "d": "d", "w": "w", "m": "m", "y": "y"}


# --- versions (pure) -----------------------------------------------------------------

Version = tuple[int, int, int]
# 1.2 brought `borg compact` (1.1 frees space within prune), --upload-ratelimit and the
# 1.2 archive matching (--glob-archives); borg 2 has another command line altogether.
SUPPORTED = ((1, 2, 0), (2, 0, 0))


def parse_version(text: str) -> Version | None:
    """The version in `borg --version` ("borg 1.2.4", "borg-linux64 1.4.0",
    "borg 2.0.0b14"); None if there is none."""
    match = re.match(r"\S+ (\d+)\.(\d+)\.(\d+)", text.strip())
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def version_problem(text: str, binary: str) -> str | None:
    """One line on why the borg that printed `text` cannot serve; None if it can."""
    version = parse_version(text)
    low, high = SUPPORTED
    if version is not None and low <= version < high:
        return None
    said = _one_line(text, 80) or "nothing"
    if version is None:
        what = "has no version henbackup can read"
    else:
        what = "is too old" if version < low else "is borg 2 or later (another command line)"
    return (
        f"borg ({binary}) {what} (`borg --version` said {said!r}): henbackup needs borg 1.2"
        " or later, before 2 (Debian 12's borgbackup): install it or set daemon.borg"
    )


# --- command lines (pure) -------------------------------------------------------------


def archive_glob(backup: str | None, host: str | None) -> str:
    """The --glob-archives pattern of one backup's archives, of one host, or both."""
    return SEPARATOR.join((backup or "*", host or "*", "*"))


def archive_name(backup: str, host: str, now: datetime) -> str:
    """`BACKUP@HOST@2026-12-02T07:00:00.123456` (UTC, unique to the microsecond)."""
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    return SEPARATOR.join((backup, host, stamp))


def split_name(name: str) -> tuple[str | None, str]:
    """(backup, host) of an archive name of ours; (None, "") for any other archive."""
    parts = name.split(SEPARATOR)
    if len(parts) != 3:
        return None, ""
    return parts[0], parts[1]


def kib_per_second(bytes_per_second: int) -> int:
    """borg's --upload-ratelimit unit is KiB/s: round down, never to 0 (no limit)."""
    return max(1, bytes_per_second // 1024)


def global_flags(target: Target, lock_wait: float = 0.0) -> Argv:
    """Flags every command gets: JSON log lines, the lock wait, the upload limit."""
    flags = ["--log-json", "--lock-wait", str(max(1, int(lock_wait)))]
    if target.upload_limit is not None:
        flags += ["--upload-ratelimit", str(kib_per_second(target.upload_limit))]
    return tuple(flags)


def shell_pattern(pattern: str) -> str:
    """A restic pattern as borg's shell-style one: one that starts with "/" is anchored at
    the root, any other matches at any depth (`.git`, `*.tmp`, `cache/tmp`), as restic
    matches them; the style is explicit, so no prefix of the user's text (`re:`) is read."""
    pattern = pattern.rstrip("/") or "/"
    return f"sh:{pattern}" if pattern.startswith("/") else f"sh:**/{pattern}"


def exclude_patterns(excludes: Sequence[str]) -> Argv:
    """henbackup's excludes (restic's syntax) as borg shell-style patterns."""
    return tuple(item for pattern in excludes for item in ("--exclude", shell_pattern(pattern)))


def include_pattern(include: str) -> str:
    """A restore's include as borg reads it: a plain path as a path prefix (that path and
    what is below it, as `plain_include` promises), any other as restic's pattern."""
    if plain_include(include):
        return f"pp:{include}"  # borg drops the leading "/" itself (archives keep none)
    return shell_pattern(include)


def comment_of(paths: Sequence[str]) -> str:
    """The archive comment: its paths as JSON, braces doubled (borg expands {placeholders})."""
    text = json.dumps({"paths": list(paths)}, ensure_ascii=False)
    return text.replace("{", "{{").replace("}", "}}")


def backup_args(request: BackupRequest, name: str, recorded: Sequence[str] = ()) -> Argv:
    """`create` of `request`'s paths into archive `name`, whose comment records `recorded`."""
    return (
        "create",
        "--json",
        "--progress",
        "--list",
        "--filter",
        "AME",
        "--comment",
        comment_of(recorded),
        *exclude_patterns(request.excludes),
        "--",
        f"::{name}",
        *request.paths,
    )


def scan_args(request: BackupRequest, name: str) -> Argv:
    """The walk of `backup_args` as a dry run that lists each item it would save ("-"):
    the same paths, the same excludes, borg's own matcher (borg_scan.py adds them up)."""
    return (
        "create",
        "--dry-run",
        "--list",
        "--filter=-",
        *exclude_patterns(request.excludes),
        "--",
        f"::{name}",
        *request.paths,
    )


def list_args(backup: str | None = None, host: str | None = None) -> Argv:
    args = ["list", "--json", "--format", "{hostname}{comment}"]
    if backup is not None or host:
        args += ["--glob-archives", archive_glob(backup, host)]
    return tuple(args)


def restore_args(archive: str, includes: Sequence[str] = ()) -> Argv:
    """`borg extract` into the current directory, of what `includes` select."""
    return ("extract", "--progress", "--", f"::{archive}", *map(include_pattern, includes))


def keep_within(duration: str) -> str:
    """restic's keep-within duration ("1y2m3d4h") as borg's single-unit one, in hours
    when it mixes units (borg takes one number and one unit)."""
    parts = re.findall(r"(\d+)([ymdh])", duration)
    if len(parts) == 1:
        return f"{parts[0][0]}{_RESTIC_TO_BORG_UNITS[parts[0][1]]}"
    hours = {"y": 365 * 24, "m": 31 * 24, "d": 24, "h": 1}
    return f"{sum(int(n) * hours[unit] for n, unit in parts)}H"


def keep_flags(policy: Retention) -> Argv:
    """The --keep-* flags of a retention policy."""
    pairs = (
        ("--keep-last", policy.keep_last),
        ("--keep-hourly", policy.keep_hourly),
        ("--keep-daily", policy.keep_daily),
        ("--keep-weekly", policy.keep_weekly),
        ("--keep-monthly", policy.keep_monthly),
        ("--keep-yearly", policy.keep_yearly),
    )
    flags = [item for flag, value in pairs if value is not None for item in (flag, str(value))]
    if policy.keep_within is not None:
        flags += ["--keep-within", keep_within(policy.keep_within)]
    return tuple(flags)


def prune_args(policy: Retention, backup: str, host: str) -> Argv:
    """Forget within this backup's archives by this host; no compaction (that is separate)."""
    return ("prune", "--list", "--glob-archives", archive_glob(backup, host), *keep_flags(policy))


def check_args(read_data_subset: str | None = None) -> Argv:
    """borg checks all data or none: any subset asks for all (--verify-data)."""
    return ("check", "--verify-data") if read_data_subset else ("check",)


INIT_ARGS: Argv = ("init", "--encryption", "repokey", "--make-parent-dirs")
COMPACT_ARGS: Argv = ("compact",)
INFO_ARGS: Argv = ("info", "--json")
UNLOCK_ARGS: Argv = ("with-lock", "::", "true")  # borg removes stale locks of this host


# --- environment and secrets (pure) ---------------------------------------------------


def password_env(source: PasswordSource, fd: int | None = None) -> dict[str, str]:
    """How borg gets the password: a command (a file is read by `cat`), or an inherited pipe."""
    if source.kind == "file":
        return {"BORG_PASSCOMMAND": f"cat -- {shlex.quote(source.value)}"}
    if source.kind == "command":
        return {"BORG_PASSCOMMAND": source.value}
    if fd is None:
        raise ValueError("a literal password needs the read end of a pipe")
    return {"BORG_PASSPHRASE_FD": str(fd)}


def child_env(
    inherited: Mapping[str, str],
    target: Target,
    password: Mapping[str, str],
    base_dir: Path | None = None,
) -> dict[str, str]:
    """borg's environment: ours without BORG_*, plus the target's pairs (BORG_RSH, say),
    less any that would say where the repository or its password is, plus ours."""
    env = {k: v for k, v in inherited.items() if not k.startswith(_INHERITED_PREFIX)}
    env.update(target.env)
    for name in _OVERRIDDEN_VARS & env.keys():
        del env[name]
    env.update(password)
    env["BORG_REPO"] = target.location
    if base_dir is not None:  # its cache and security records (the service's HOME is read-only)
        env["BORG_BASE_DIR"] = str(base_dir)
    env["BORG_HOSTNAME_IS_UNIQUE"] = "yes"  # stale locks of this host's dead processes go
    for question in (
        "BORG_RELOCATED_REPO_ACCESS_IS_OK",
        "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK",
    ):
        env[question] = "no"  # nobody is there to answer
    env["BORG_DISPLAY_PASSPHRASE"] = "no"
    return env


# --- output parsing (pure) ------------------------------------------------------------


@dataclass(frozen=True)
class LogLine:
    """One line of borg's stderr: a log message (level, msgid) or plain text."""

    text: str
    level: str = "ERROR"
    msgid: str = ""


def parse_document(text: str) -> dict[str, Any]:
    """borg's --json result (stdout). Raises EngineError if it is not a JSON object."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json can go
        doc = None
    if not isinstance(doc, dict):
        raise EngineError("borg printed no JSON result")
    return doc


def _number(doc: Any, key: str) -> int:
    value = finite(doc, key) if isinstance(doc, dict) else None
    return 0 if value is None else int(value)


def parse_time(text: str) -> datetime:
    """borg's local time without an offset, as an aware datetime."""
    try:
        return datetime.fromisoformat(text).astimezone()
    except (TypeError, ValueError, OverflowError, OSError):  # the last two: out of local time
        raise EngineError(f"borg printed an unreadable time: {text!r}") from None


def comment_paths(comment: str) -> tuple[str, ...]:
    """The paths an archive's comment records; none when it records none that can be read
    (anyone who may write the repository writes comments: one nested too deep included)."""
    try:
        return tuple(str(p) for p in json.loads(comment)["paths"])
    except (ValueError, TypeError, KeyError, RecursionError):
        return ()


def parse_archive(doc: Mapping[str, Any]) -> Snapshot:
    name = str(doc.get("name", ""))
    backup, host = split_name(name)
    paths = comment_paths(str(doc.get("comment") or ""))
    return Snapshot(
        id=str(doc["id"]),
        short_id=str(doc["id"])[:8],
        time=parse_time(str(doc.get("time") or doc.get("start"))),
        host=host or str(doc.get("hostname", "")),
        paths=paths,
        tags=(snapshot_tag(backup),) if backup is not None else (),
    )


def parse_archives(doc: Mapping[str, Any]) -> list[tuple[str, Snapshot]]:
    """`list --json`: (archive name, snapshot), oldest first (borg's times are whole
    seconds: the time in our names, to the microsecond, breaks a tie)."""
    archives = doc.get("archives")
    if not isinstance(archives, list):
        raise EngineError("borg list printed no archives")
    try:
        found = [
            (str(a.get("name", "")), parse_archive(a)) for a in archives if isinstance(a, dict)
        ]
    except (KeyError, TypeError, ValueError, RecursionError):  # not what borg prints
        raise EngineError("borg printed an archive list of unexpected shape") from None
    return sorted(found, key=lambda pair: (pair[1].time, name_stamp(pair[0])))


def info_size(doc: Mapping[str, Any]) -> int:
    """The repository's size in `info --json` (its cache's unique_csize)."""
    cache = doc.get("cache", {})
    stats = cache.get("stats", {}) if isinstance(cache, dict) else None
    if not isinstance(stats, dict):
        raise EngineError("borg printed an info of unexpected shape")
    return _number(stats, "unique_csize")


def name_stamp(name: str) -> str:
    """The time in an archive name of ours ("" for any other), which sorts as it reads."""
    parts = name.split(SEPARATOR)
    return parts[2] if len(parts) == 3 else ""


_PRUNE_LINE = re.compile(r"^(Keeping|Pruning) archive.*\[([0-9a-f]{64})\]\s*$")


def parse_prune(lines: Sequence[LogLine]) -> ForgetResult:
    """`prune --list` log lines: "Keeping archive ... [id]", "Pruning archive ... [id]"."""
    kept, removed = [], []
    for line in lines:
        match = _PRUNE_LINE.match(line.text)
        if match:
            (kept if match[1] == "Keeping" else removed).append(match[2])
    return ForgetResult(kept=tuple(kept), removed=tuple(removed))


def parse_progress(message: Mapping[str, Any], elapsed: float) -> TransferProgress | None:
    """A create (archive_progress) or extract (progress_percent) line; None otherwise.
    borg does not count a backup's total ahead: its fraction is 0 until the scan beside it
    gives one (`_Listener`)."""
    kind = message.get("type")
    if message.get("finished"):
        return None
    if kind == "archive_progress":
        return TransferProgress(
            fraction=0.0,
            files_done=_number(message, "nfiles"),
            total_files=None,
            bytes_done=_number(message, "original_size"),
            total_bytes=None,
            seconds_elapsed=elapsed,
        )
    if kind == "progress_percent" and message.get("msgid") == "extract":
        done, total = _number(message, "current"), _number(message, "total")
        return TransferProgress(
            fraction=min(1.0, done / total) if total else 0.0,
            files_done=0,
            total_files=None,
            bytes_done=done,
            total_bytes=total or None,
            seconds_elapsed=elapsed,
        )
    return None


def parse_backup(
    doc: Mapping[str, Any], statuses: Mapping[str, int], duration: float, warnings: Sequence[str]
) -> BackupResult:
    """`create --json` with the counts of its A(dded) and M(odified) file lines."""
    archive = doc.get("archive")
    if not isinstance(archive, dict) or not archive.get("id"):
        raise EngineError("borg create printed no archive")
    stats = archive.get("stats")
    files = _number(stats, "nfiles")
    new, changed = statuses.get("A", 0), statuses.get("M", 0)
    return BackupResult(
        snapshot_id=str(archive["id"]),
        files_new=new,
        files_changed=changed,
        files_unmodified=max(0, files - new - changed),
        bytes_added=_number(stats, "deduplicated_size"),
        bytes_processed=_number(stats, "original_size"),
        duration=duration,
        warnings=limit_warnings(warnings),
    )


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def classify_failure(
    command: str, returncode: int, lines: Sequence[LogLine], repository: str
) -> EngineError:
    """The typed error for a failed borg run. `lines` must already be redacted."""
    where = f"repository {repository}"
    ids = {line.msgid for line in lines}
    errors = [line.text for line in lines if line.level in ("ERROR", "CRITICAL")]
    reason = errors[0] if errors else (lines[-1].text if lines else f"exit code {returncode}")
    if returncode < 0:
        reason = f"borg was killed by signal {-returncode}"
    if ids & _WRONG_PASSWORD:
        return WrongPassword(f"wrong password for {where}: check its password setting")
    if ids & _LOCKED:
        return RepositoryLocked(f"{where} is locked by another process: {_one_line(reason)}")
    if ids & _MISSING:
        return RepositoryMissing(f"no borg repository at the location of {where}")
    refused = ssh_refusal([line.text for line in lines], where)
    if refused is not None:
        return refused
    low = " ".join(errors).lower()
    if ids & _UNREACHABLE or any(word in low for word in _UNREACHABLE_WORDS):
        if _CLOSED in reason.lower():  # ssh said nothing borg kept: what that means
            return BackendUnreachable(f"{where} is unreachable: {_CLOSED_MEANING} ({reason})")
        return BackendUnreachable(f"{where} is unreachable: {_one_line(reason)}")
    if ids & _NO_ARCHIVE:
        return SnapshotNotFound(f"no such snapshot in {where}")
    return EngineError(f"borg {command} failed on {where}: {_one_line(reason)}")


def ssh_refusal(texts: Sequence[str], where: str) -> AccessRefused | None:
    """AccessRefused if ssh (its lines, which borg forwards as "Remote: ...") says the server
    refused the key or is not the one known_hosts knows; None otherwise."""
    remote = [text for text in texts if text.startswith(_REMOTE)]
    if any(needle in text.lower() for text in remote for needle in _SSH_HOST_KEY):
        return AccessRefused(
            f"{where}: the server's host key is not one that known_hosts holds: "
            "make sure it is the right server, then update known_hosts"
        )
    for text in remote:
        at = text.lower().find(_SSH_REFUSED)
        if at >= 0:
            return AccessRefused(f"{where} refused access ({_one_line(text[at:])}): {_SSH_ADVICE}")
    return None


def archive_second(doc: Mapping[str, Any]) -> int:
    """The whole second (epoch) of the start `create --json` gives its archive."""
    archive = doc.get("archive")
    start = archive.get("start") if isinstance(archive, dict) else None
    return math.ceil(parse_time(str(start)).timestamp()) if start else math.ceil(time.time())


# Seconds a mark may hold: from the epoch to the year 2242. A corrupt mark beyond (400
# digits) would overflow the float of the pause and end the run with a traceback.
_LATEST_SECOND = 2**33


def _read_second(path: Path) -> int:
    """The second noted in `path`; 0 (long ago) if there is none to read, or a corrupt one
    (not a regular file, not a number, out of range)."""
    try:
        second = int(read_record(path, limit=64))
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return 0
    return second if 0 <= second < _LATEST_SECOND else 0


def _write_second(path: Path, second: int) -> bool:
    """Note `second`; False if it cannot be noted."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, f"{second}\n".encode())
    except OSError:
        return False
    return True


def _ask_version(path: str) -> str:
    """What `borg --version` prints. Raises EngineError if borg cannot run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_PREFIX)}
    import subprocess  # in the job process only: see henbackup.process

    try:
        done = subprocess.run(
            [path, "--version"], capture_output=True, text=True, env=env, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineError(f"cannot run borg ({path}): {exc}") from None
    return done.stdout or done.stderr


def borg_version(binary: str, cache_dir: Path | None = None) -> str:
    """`borg --version` of `binary`, asked once per binary (engine/versions.py)."""
    return version_text(binary, cache_dir, _ask_version, tool="borg")


def binary_problem(binary: str, cache_dir: Path | None = None) -> str | None:
    """One line on why borg `binary` cannot serve (it cannot run, or its version), or None."""
    try:
        return version_problem(borg_version(binary, cache_dir), binary)
    except EngineError as error:
        return str(error)


# --- running borg ---------------------------------------------------------------------


@dataclass
class _Listener:
    """Follows borg's stderr: log lines kept (redacted; the first KEPT_LINES and the last
    KEPT_LAST: a million unreadable files must not take the job's memory), file statuses
    counted, progress forwarded, against the total of `total()` (files, bytes) once known."""

    redact: Callable[[str], str]
    on_progress: ProgressCallback | None = None
    started: float = 0.0
    total: Callable[[], tuple[int, int] | None] = lambda: None
    head: list[LogLine] = field(default_factory=list)
    tail: deque[LogLine] = field(default_factory=lambda: deque(maxlen=KEPT_LAST))
    dropped: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    last: TransferProgress | None = None  # the last progress forwarded

    @property
    def lines(self) -> list[LogLine]:
        """The lines kept, in order; where some were left out, a line says how many."""
        if not self.dropped:
            return [*self.head, *self.tail]
        gap = LogLine(f"... {self.dropped} more lines of borg's not kept", "WARNING")
        return [*self.head, gap, *self.tail]

    def _keep(self, line: LogLine) -> None:
        if len(self.head) < KEPT_LINES:
            self.head.append(line)
            return
        if len(self.tail) == KEPT_LAST:
            self.dropped += 1  # the oldest of the tail goes
        self.tail.append(line)

    def feed(self, line: str) -> None:
        message = parse_json_line(line)
        if message is None:
            if line.strip():
                self._keep(LogLine(self.redact(line.strip()), level="TEXT"))
            return
        kind = message.get("type")
        if kind == "log_message":
            text = self.redact(str(message.get("message", "")))
            level, msgid = str(message.get("levelname", "")), str(message.get("msgid") or "")
            self._keep(LogLine(text, level, msgid))
        elif kind == "file_status":
            status = str(message.get("status", ""))
            self.statuses[status] = self.statuses.get(status, 0) + 1
        elif self.on_progress is not None:
            progress = parse_progress(message, _elapsed(message, self.started))
            total = self.total()
            if progress is not None and total is not None:
                progress = estimate(progress, *total)
            if progress is not None:
                self.last = progress
                self.on_progress(progress)


def _elapsed(message: Mapping[str, Any], started: float) -> float:
    moment = finite(message, "time")
    return 0.0 if moment is None else max(0.0, moment - started)


def status_counters(line: str) -> tuple[int, int] | None:
    """What moves with progress in a create or extract line."""
    message = parse_json_line(line) if '"type"' in line else None
    if message is None:
        return None
    if message.get("type") == "archive_progress":
        return (_number(message, "nfiles"), _number(message, "original_size"))
    if message.get("type") == "progress_percent":
        return (0, _number(message, "current"))
    return None


@dataclass(frozen=True)
class _Outcome:
    """One finished borg run: its exit, its log lines, its files' statuses (A, M...)."""

    result: ToolResult
    log: tuple[LogLine, ...]
    statuses: Mapping[str, int]
    last: TransferProgress | None = None  # its last progress report

    @property
    def document(self) -> dict[str, Any]:
        return parse_document("\n".join(self.result.messages))


class BorgEngine(ToolEngine):
    """The Engine on a borg binary (1.2). Blocking; meant for a job process."""

    tool = "borg"
    # A first SIGINT makes borg create finish its current file and save a checkpoint
    # archive; SIGTERM stops it at once, its transaction rolled back and its lock removed.
    interrupt = signal.SIGTERM

    def __init__(
        self,
        binary: str = "borg",
        cache_dir: Path | None = None,
        lock_wait: float = 0.0,
        on_spawn: SpawnCallback | None = None,
        checkpoint: Checkpoint | None = None,
        stall_timeout: float = STALL_TIMEOUT,
        on_stall: StallCallback | None = None,
        paused: Callable[[], bool] = lambda: False,
    ) -> None:
        super().__init__(binary, on_spawn, checkpoint, stall_timeout, on_stall, paused)
        self.cache_dir = cache_dir
        self.base_dir = cache_dir / "borg" if cache_dir is not None else None
        self.lock_wait = lock_wait
        self._version_ok = False

    # -- the Engine contract --

    def ensure_initialized(self, target: Target) -> bool:
        try:
            self._call(target, ("list", "--short", "--last", "1"))
            return False
        except RepositoryMissing:
            pass
        self._call(target, INIT_ARGS)
        return True

    def backup(
        self, target: Target, request: BackupRequest, on_progress: ProgressCallback | None = None
    ) -> BackupResult:
        paths = tuple(os.path.abspath(p) for p in request.paths)
        request = BackupRequest(request.backup, paths, request.excludes, request.host)
        # The archive records the paths that are there (as restic's snapshot does); borg
        # warns of the others.
        there = tuple(p for p in paths if os.path.lexists(p))
        # borg times archives to the second, and its retention cannot order two of one
        # second: this archive starts in a later second than the last of this backup.
        record = self._last_archive(target, request)
        if record is not None:  # at most a second: a mark ahead of now is a clock set back
            self._pause(min(1.0, _read_second(record) + 1 - time.time()))
        name = archive_name(request.backup, request.host, datetime.now(UTC))
        scan = ScanTotal()
        sidecar = self._scan(target, request, name, scan) if on_progress else None
        try:
            outcome = self._call(
                target,
                backup_args(request, name, there),
                on_progress=on_progress,
                warn_ok=True,
                sidecar=sidecar,
                total=lambda: scan.total,
            )
            if sidecar is not None:  # no checkpoint: the archive is made, nothing to cancel
                sidecar.wait(SCAN_GRACE)
        finally:
            if sidecar is not None:
                sidecar.stop()
        warnings = [line.text for line in outcome.log if line.level == "WARNING"]
        document = outcome.document
        result = parse_backup(document, outcome.statuses, outcome.result.seconds, warnings)
        if on_progress is not None:
            self._report_end(on_progress, outcome.last, scan.total, result, document)
        if record is None or not _write_second(record, archive_second(document)):
            self._pause(math.ceil(time.time()) - time.time())  # not noted: wait now
        return result

    def snapshots(
        self, target: Target, backup: str | None = None, host: str | None = None
    ) -> list[Snapshot]:
        return [s for _, s in self._archives(target, backup, host)]

    def restore(
        self,
        target: Target,
        snapshot_id: str,
        destination: str,
        includes: tuple[str, ...] = (),
        on_progress: ProgressCallback | None = None,
    ) -> RestoreResult:
        name, snapshot = self._resolve(target, snapshot_id)
        os.makedirs(destination, exist_ok=True)
        outcome = self._call(
            target, restore_args(name, includes), on_progress=on_progress, cwd=destination
        )
        files, size = count_files(destination, restored_roots(snapshot.paths, includes))
        return RestoreResult(destination, files, size, outcome.result.seconds)

    def forget(self, target: Target, policy: Retention, backup: str, host: str) -> ForgetResult:
        if not keep_flags(policy):  # no rule keeps everything (borg refuses to run)
            return ForgetResult(tuple(s.id for s in self.snapshots(target, backup, host)), ())
        return parse_prune(self._call(target, prune_args(policy, backup, host)).log)

    def prune(self, target: Target) -> None:
        self._call(target, COMPACT_ARGS)

    def check(self, target: Target, read_data_subset: str | None = None) -> CheckResult:
        outcome = self._call(target, check_args(read_data_subset), check=True)
        if outcome.result.returncode == 0:
            return CheckResult(ok=True)
        errors = [line.text for line in outcome.log if line.level in ("ERROR", "WARNING")]
        return CheckResult(ok=False, errors=limit_warnings(errors or ["borg check failed"]))

    def unlock_stale(self, target: Target) -> None:
        """Opening the repository with a lock makes borg remove stale locks of this host's
        dead processes; a live lock is left alone (that conflict is no error here)."""
        with contextlib.suppress(RepositoryLocked):
            self._call(target, UNLOCK_ARGS, lock_wait=1.0)

    def stats(self, target: Target) -> RepositoryStats:
        size = info_size(self._call(target, INFO_ARGS).document)
        count = len(self._archives(target))
        return RepositoryStats(
            total_size=size,
            total_file_count=0,  # borg counts chunks, not files
            snapshots_count=count,
        )

    # -- helpers --

    def _scan(
        self, target: Target, request: BackupRequest, name: str, scan: ScanTotal
    ) -> Sidecar | None:
        """Start borg's dry run of the backup (borg_scan.py); None if it cannot start (the
        backup goes on without a total)."""
        self._require_version()
        argv = (self.binary, "--log-json", *scan_args(request, name))
        env = child_env(os.environ, target, {}, self.base_dir)  # it opens no repository
        try:
            return Sidecar(argv, env, scan.feed, scan.end)
        except OSError:
            return None

    @staticmethod
    def _report_end(
        on_progress: ProgressCallback,
        last: TransferProgress | None,
        total: tuple[int, int] | None,
        result: BackupResult,
        document: Mapping[str, Any],
    ) -> None:
        """The backup's last progress: all read, of the scan's total (else of what borg
        says it read)."""
        if total is None:
            stats = document.get("archive", {}).get("stats", {})
            total = (_number(stats, "nfiles"), _number(stats, "original_size"))
        final = finished(last, *total, result.duration)
        if final is not None:
            on_progress(final)

    def _archives(
        self, target: Target, backup: str | None = None, host: str | None = None
    ) -> list[tuple[str, Snapshot]]:
        return parse_archives(self._call(target, list_args(backup, host)).document)

    def _last_archive(self, target: Target, request: BackupRequest) -> Path | None:
        """The file noting when this backup's last archive by this host started, in the
        cache (one-shot jobs and the daemon's share it); None without a cache."""
        if self.base_dir is None:
            return None
        key = "\0".join((target.location, request.backup, request.host)).encode()
        return self.base_dir / "henbackup" / f"last-{hashlib.sha256(key).hexdigest()[:32]}"

    def _resolve(self, target: Target, snapshot_id: str) -> tuple[str, Snapshot]:
        """The one archive an id, a prefix of one or "latest" names."""
        archives = self._archives(target)
        if snapshot_id == "latest":
            found = archives[-1:]
        else:
            found = [(n, s) for n, s in archives if snapshot_id and s.id.startswith(snapshot_id)]
        if len(found) != 1:
            raise SnapshotNotFound(f"no snapshot {snapshot_id!r} in repository {target.name}")
        return found[0]

    def _call(
        self, target: Target, args: Argv, *, lock_wait: float | None = None, **options: Any
    ) -> _Outcome:
        """Run borg (see `_call_once`): with `lock_wait`, borg waits that long for a lock;
        else each attempt waits a second, and they go on for up to the engine's lock_wait
        (see `_while_locked`)."""
        if lock_wait is not None:
            return self._call_once(target, args, lock_wait, **options)
        attempt = functools.partial(self._call_once, target, args, 1.0, **options)
        return self._while_locked(attempt, self.lock_wait)

    def _call_once(
        self,
        target: Target,
        args: Argv,
        lock_wait: float,
        *,
        on_progress: ProgressCallback | None = None,
        cwd: str | None = None,
        warn_ok: bool = False,
        check: bool = False,
        sidecar: Sidecar | None = None,
        total: Callable[[], tuple[int, int] | None] = lambda: None,
    ) -> _Outcome:
        """Run borg once. Exit 1 (warnings) passes with `warn_ok`; a failed `check` whose
        reason is no typed error is a result, not a failure. Progress is of `total()`
        (files, bytes) once known; a `sidecar` is read meanwhile."""
        self._require_version()
        target = with_secret_env(target)  # provider keys: read now, for borg only
        redact = Redactor.of(secrets_of(target))
        listener = _Listener(redact, on_progress, started=_now(), total=total)
        argv = (self.binary, *global_flags(target, lock_wait), *args)
        read_fd = password_pipe(target.password)
        try:
            env = child_env(
                os.environ, target, password_env(target.password, read_fd), self.base_dir
            )
        except BaseException:
            if read_fd is not None:
                os.close(read_fd)
            raise
        result = self._launch(
            argv,
            env,
            target,
            listener.feed,
            password_fd=read_fd,
            follow_stderr=True,
            cwd=cwd,
            sidecar=sidecar,
        )
        outcome = _Outcome(result, tuple(listener.lines), dict(listener.statuses), listener.last)
        code = result.returncode
        if code == 0 or (warn_ok and code == EXIT_WARNING):
            return outcome
        error = classify_failure(args[0], code, outcome.log, target.name)
        if check and type(error) is EngineError and code > 0:
            return outcome
        raise error

    def _require_version(self) -> None:
        """Before the first command: a borg this engine does not speak is refused."""
        if not self._version_ok:
            problem = binary_problem(self.binary, self.cache_dir)
            if problem is not None:
                raise EngineError(problem)
            self._version_ok = True

    # -- what run.py asks of borg --

    def _read_other(self, file: IO[bytes]) -> str:
        return read_whole(file, "borg")  # stdout: the --json result, whole

    def _messages(self, text: str, target: Target) -> list[str]:
        return [text]  # stdout: the --json result, parsed, never shown

    def _counters(self, line: str) -> object | None:
        return status_counters(line)


def _now() -> float:
    return datetime.now(UTC).timestamp()
