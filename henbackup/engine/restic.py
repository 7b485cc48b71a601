"""restic behind the Engine contract: the only module that knows restic's CLI and output.

Supports restic 0.14 (Debian 12) to 0.18 (Debian 13). Features are derived from `restic
version` (asked once, lazily), never assumed. The module has two halves: pure functions
that build argv tuples and environments or parse output, then `ResticEngine`, the one
place that runs restic.

Secrets: the repository location travels in RESTIC_REPOSITORY and the password as a file,
a command or an inherited pipe, never in argv; messages built from restic's stderr are
redacted of the location, the password and the target's env values (henbackup/redact.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

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
)
from henbackup.engine.run import (
    WATCH_TICK,
    LineHandler,
    ToolEngine,
    ToolResult,
    ToolRun,
    count_files,
    finite,
    limit_warnings,
    parse_json_line,
    password_pipe,
    read_back,
    restored_roots,
    secrets_of,
)
from henbackup.engine.secret_env import with_secret_env
from henbackup.engine.stall import PROGRESS_BYTES, OpenFile, files_and_sockets
from henbackup.engine.transfer import Upload, UploadTracker, finished
from henbackup.engine.versions import version_text
from henbackup.errors import (
    AccessRefused,
    BackendUnreachable,
    EngineError,
    RepositoryLocked,
    RepositoryMissing,
    SnapshotNotFound,
    Stalled,
    WrongPassword,
)
from henbackup.names import snapshot_tag
from henbackup.process import signal_name
from henbackup.redact import Redactor

Version = tuple[int, int, int]
Argv = tuple[str, ...]

# restic prints JSON status lines at 60 per second by default; two are plenty for
# STATUS= and the progress events, and cost restic less.
PROGRESS_FPS = "2"
# The unlock after an interrupt runs at most this long (its backend may be what hangs).
UNLOCK_LIMIT = 5.0
# restic writes each pack to a temporary file of this name, then sends it from there.
TEMP_PACK = "restic-temp-pack-"
# Bytes that left a restic less than this long ago say that it is still sending.
LEAVING = 3 * WATCH_TICK

# Inherited variables that would override what the engine says (repository, password).
_OVERRIDDEN_VARS = frozenset(
    {
        "RESTIC_REPOSITORY",
        "RESTIC_REPOSITORY_FILE",
        "RESTIC_PASSWORD",
        "RESTIC_PASSWORD_FILE",
        "RESTIC_PASSWORD_COMMAND",
        "RESTIC_KEY_HINT",
    }
)


# --- versions and features ------------------------------------------------------------


@dataclass(frozen=True)
class Features:
    """What the installed restic can do, derived from its version."""

    version: Version

    @property
    def restore_progress(self) -> bool:
        """restore --json prints status and summary lines."""
        return self.version >= (0, 16, 0)

    @property
    def skip_if_unchanged(self) -> bool:
        return self.version >= (0, 17, 0)

    @property
    def exit_codes(self) -> bool:
        """10 repository missing, 11 lock failed, 12 wrong password."""
        return self.version >= (0, 17, 0)


def parse_version(text: str) -> Version:
    """The version in `restic version` output; (0, 0, 0) (no optional feature) if unknown."""
    match = re.search(r"restic (\d+)\.(\d+)\.(\d+)", text)
    if match is None:
        return (0, 0, 0)
    return (int(match[1]), int(match[2]), int(match[3]))


# --- command lines (pure) -------------------------------------------------------------


def kib_per_second(bytes_per_second: int) -> int:
    """restic's --limit-* unit is KiB/s: round down, but never to 0 (which means no limit)."""
    return max(1, bytes_per_second // 1024)


def global_flags(target: Target, cache_dir: Path | None = None) -> Argv:
    """Flags every command gets: JSON output, cache, backend options, limits."""
    flags = ["--json"]
    if cache_dir is not None:
        flags += ["--cache-dir", str(cache_dir)]
    for option in target.options:
        flags += ["-o", option]
    if target.upload_limit is not None:
        flags += ["--limit-upload", str(kib_per_second(target.upload_limit))]
    if target.download_limit is not None:
        flags += ["--limit-download", str(kib_per_second(target.download_limit))]
    return tuple(flags)


def make_command(binary: str, args: Sequence[str], flags: Sequence[str]) -> Argv:
    """`restic <subcommand> <global flags> <subcommand flags and arguments>`."""
    return (binary, args[0], *flags, *args[1:])


def backup_args(request: BackupRequest, skip_if_unchanged: bool = False) -> Argv:
    args = ["backup", "--tag", snapshot_tag(request.backup)]
    if request.host:
        args += ["--host", request.host]
    for pattern in request.excludes:
        args += ["--exclude", pattern]
    if skip_if_unchanged:
        args.append("--skip-if-unchanged")
    return (*args, "--", *request.paths)


def snapshots_args(
    backup: str | None = None, host: str | None = None, ids: Sequence[str] = ()
) -> Argv:
    args = ["snapshots"]
    if backup is not None:
        args += ["--tag", snapshot_tag(backup)]
    if host:
        args += ["--host", host]
    return (*args, "--", *ids) if ids else tuple(args)


def restore_args(snapshot_id: str, destination: str, includes: Sequence[str] = ()) -> Argv:
    args = ["restore", "--target", destination]
    for path in includes:
        args += ["--include", path]
    return (*args, "--", snapshot_id)


def keep_flags(policy: Retention) -> Argv:
    """The --keep-* flags of a retention policy, in restic's order."""
    pairs = (
        ("--keep-last", policy.keep_last),
        ("--keep-hourly", policy.keep_hourly),
        ("--keep-daily", policy.keep_daily),
        ("--keep-weekly", policy.keep_weekly),
        ("--keep-monthly", policy.keep_monthly),
        ("--keep-yearly", policy.keep_yearly),
        ("--keep-within", policy.keep_within),
    )
    return tuple(item for flag, value in pairs if value is not None for item in (flag, str(value)))


def forget_args(policy: Retention, backup: str, host: str) -> Argv:
    """Forget within this backup's snapshots by this host; no prune (that is separate).

    Grouping by host and tags only, so that a change of paths does not start a new group
    whose old snapshots would be kept forever.
    """
    args = ["forget", "--tag", snapshot_tag(backup)]
    if host:
        args += ["--host", host]
    return (*args, "--group-by", "host,tags", *keep_flags(policy))


def check_args(read_data_subset: str | None = None) -> Argv:
    if read_data_subset:
        return ("check", "--read-data-subset", read_data_subset)
    return ("check",)


INIT_ARGS: Argv = ("init",)
CAT_CONFIG_ARGS: Argv = ("cat", "--no-lock", "config")
PRUNE_ARGS: Argv = ("prune",)
UNLOCK_ARGS: Argv = ("unlock",)  # without --remove-all: only stale locks
STATS_ARGS: Argv = ("stats", "--mode", "raw-data")


# --- environment and secrets (pure) ---------------------------------------------------


def password_env(source: PasswordSource, fd: int | None = None) -> dict[str, str]:
    """How restic gets the password: a file, a command, or (literal) an inherited pipe."""
    if source.kind == "file":
        return {"RESTIC_PASSWORD_FILE": source.value}
    if source.kind == "command":
        return {"RESTIC_PASSWORD_COMMAND": source.value}
    if fd is None:
        raise ValueError("a literal password needs the read end of a pipe")
    return {"RESTIC_PASSWORD_FILE": f"/dev/fd/{fd}"}


def child_env(
    inherited: Mapping[str, str], target: Target, password: Mapping[str, str]
) -> dict[str, str]:
    """restic's environment: ours without RESTIC_*, plus the target's pairs, plus ours."""
    env = {k: v for k, v in inherited.items() if not k.startswith("RESTIC_")}
    env.update(target.env)
    for name in [k for k in env if k in _OVERRIDDEN_VARS or k.startswith("RESTIC_FROM_")]:
        del env[name]
    env.update(password)
    env["RESTIC_REPOSITORY"] = target.location
    env["RESTIC_PROGRESS_FPS"] = PROGRESS_FPS
    return env


# --- output parsing (pure) ------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def last_json(lines: Sequence[str]) -> Any:
    """The last line of stdout that parses as a JSON document (restic prints it last)."""
    for line in reversed(lines):
        text = line.strip()
        if text.startswith(("[", "{")):
            with contextlib.suppress(ValueError, RecursionError):
                return json.loads(text)
    raise EngineError("restic printed no JSON result")


def _error_text(message: Mapping[str, Any]) -> str:
    """One restic JSON error message (0.14: Go error struct; 0.17+: {"message": ...})."""
    error = message.get("error")
    if error == {}:  # 0.14: a Go error with nothing exported (a directory it may not open)
        text = "could not be read"
    elif isinstance(error, dict):
        if "message" in error:
            text = str(error["message"])
        else:
            code = error.get("Err")
            reason = os.strerror(code) if isinstance(code, int) else str(code)
            text = f"{error.get('Op', 'error')} {error.get('Path', '')}: {reason}"
    elif error is not None:
        text = str(error)
    else:
        text = str(message.get("message", ""))
    item = message.get("item")
    return f"{item}: {text}" if item and str(item) not in text else text


def stderr_messages(text: str) -> list[str]:
    """restic's stderr as human lines: JSON errors rendered, escapes and blanks removed."""
    lines: list[str] = []
    for raw in text.splitlines():
        line = _ANSI.sub("", raw).replace("\r", "").strip()
        message = parse_json_line(line)
        if message is not None and message.get("message_type") == "error":
            text = " ".join(_error_text(message).split())  # a file's name: on one line
            lines += [text] if text else []
            continue
        if message is not None and message.get("message_type") == "exit_error":
            line = str(message.get("message", ""))
        lines += [part.strip() for part in line.splitlines() if part.strip()]
    return lines


def _number(message: Mapping[str, Any], key: str) -> int:
    value = finite(message, key)
    return 0 if value is None else int(value)


def _total(message: Mapping[str, Any], key: str) -> int | None:
    """A total restic omits while it is 0, i.e. still unknown."""
    value = finite(message, key)
    return int(value) if value else None


def parse_progress(message: Mapping[str, Any]) -> TransferProgress | None:
    """A backup or restore status line as TransferProgress; None for any other message."""
    if message.get("message_type") != "status":
        return None
    fraction = finite(message, "percent_done") or 0.0
    if "files_restored" in message or "bytes_restored" in message:
        files = _number(message, "files_restored") + _number(message, "files_skipped")
        size = _number(message, "bytes_restored") + _number(message, "bytes_skipped")
    else:
        files, size = _number(message, "files_done"), _number(message, "bytes_done")
    remaining = finite(message, "seconds_remaining")
    return TransferProgress(
        fraction=min(1.0, max(0.0, fraction)),
        files_done=files,
        total_files=_total(message, "total_files"),
        bytes_done=size,
        total_bytes=_total(message, "total_bytes"),
        seconds_elapsed=finite(message, "seconds_elapsed") or 0.0,
        seconds_remaining=None if remaining is None else max(0.0, remaining),
    )


def upload_of(
    written: int,
    packs: Sequence[OpenFile],
    dropped: int = 0,
    packed: int = 0,
    leaving: int = 0,
) -> Upload:
    """What restic has sent and is sending, from what it wrote (less its output to us), its
    open temporary packs, the bytes of those it closed unsent (`dropped_since`), the bytes
    of every pack seen so far (`packed`, each at its largest) and, while bytes leave with
    no pack being read back, what waits in packs written whole (`PackBook`).

    Each pack is written to its file as restic reads, then sent (to a socket, a pipe or a
    local repository) at the backend's pace, then closed. Sent to a REST server or a pipe,
    it is read back as it goes: `written` holds every pack closed after sending twice, the
    others once, and of those being sent (read back, not to the end yet) what is sent; so
    half of it, packs not seen included, is what left, and only packs being read back wait
    (restic 0.18 keeps a written pack open that it never sends). Sent to S3, a pack is read
    back at once and its position says nothing; but what restic wrote besides the packs it
    was seen writing did leave (the larger count wins), and `leaving` says what waits."""
    pending = sum(pack.size for pack in packs)
    being_sent = [pack for pack in packs if pack.position < pack.size]
    sending = sum(pack.position for pack in being_sent)
    halved = (written - pending - dropped + sending) // 2
    unsent = sum(pack.size - pack.position for pack in being_sent)
    return Upload(
        sent=max(0, halved, min(written - packed, packed)),
        unsent=unsent if being_sent else leaving,
    )


def share_out(left: dict[int, int], sending: Sequence[int], sent: int) -> None:
    """Take `sent` bytes off what is `left` of the packs `sending` (inodes), evenly, as
    restic's uploads share the bandwidth; a pack's share it did not need goes to the
    others."""
    sending = sorted(sending, key=lambda inode: left[inode])
    for done, inode in enumerate(sending):
        share = min(left[inode], sent // (len(sending) - done))
        left[inode] -= share
        sent -= share


class PackBook:
    """What a restic wrote to its temporary packs (each at its largest size seen), what it
    wrote besides, which left (`upload_of`), and what waits in packs written whole while
    bytes leave: restic reads a pack back at once to send it to S3, so that its position
    says nothing; what leaves is shared among as many packs as restic has sockets, those
    with the most left (restic 0.18 keeps a written pack open that it never sends)."""

    def __init__(self) -> None:
        self.open: dict[int, int] = {}  # open packs: inode -> largest size
        self.left: dict[int, int] = {}  # inode -> what is left to send of it
        self.closed = 0  # the bytes of those seen before, closed since
        self.others = 0  # bytes written besides the packs at the last look
        self.others_mark = 0  # and when that last grew: bytes, time (monotonic)
        self.left_at = -math.inf

    def see(
        self, packs: Sequence[OpenFile], sockets: int, written: int, now: float
    ) -> tuple[int, int]:
        """Account a look (open packs and sockets, all restic wrote, when); returns the
        bytes of every pack seen and what waits in packs written whole while bytes leave."""
        still = {pack.inode for pack in packs}  # a closed pack's inode may serve a new one
        for inode in [inode for inode in self.open if inode not in still]:
            self.closed += self.open.pop(inode)
            self.left.pop(inode, None)
        grown = [pack for pack in packs if pack.size > self.open.get(pack.inode, -1)]
        self.open.update((pack.inode, pack.size) for pack in grown)
        self.left.update((pack.inode, pack.size) for pack in grown)
        packed = self.closed + sum(self.open.values())
        others = written - packed  # what restic wrote besides its packs: what left
        whole = [pack.inode for pack in packs if pack.position >= pack.size]
        sending = sorted(whole, key=lambda inode: -self.left[inode])[: max(1, sockets)]
        share_out(self.left, sending, max(0, others - self.others))
        self.others = others
        if others >= self.others_mark + PROGRESS_BYTES:
            self.others_mark, self.left_at = others, now
        if now - self.left_at >= LEAVING:  # nothing left lately
            return packed, 0
        return packed, max(1, sum(self.left[inode] for inode in sending))


def dropped_since(before: Sequence[OpenFile], now: Sequence[OpenFile], grown: int) -> int:
    """Bytes of packs closed unsent between two looks: gone, never seen being sent, and
    more than restic wrote meanwhile (sending them would have written them whole)."""
    still = {pack.inode for pack in now}
    gone = sum(p.size for p in before if p.inode not in still and p.position >= p.size)
    return max(0, gone - grown)


def parse_backup_summary(
    summary: Mapping[str, Any], duration: float, warnings: Sequence[str] = ()
) -> BackupResult:
    """The summary line; no snapshot_id when --skip-if-unchanged made no snapshot."""
    snapshot_id = summary.get("snapshot_id")
    return BackupResult(
        snapshot_id=str(snapshot_id) if snapshot_id else None,
        files_new=_number(summary, "files_new"),
        files_changed=_number(summary, "files_changed"),
        files_unmodified=_number(summary, "files_unmodified"),
        bytes_added=_number(summary, "data_added"),
        bytes_processed=_number(summary, "total_bytes_processed"),
        duration=duration,
        warnings=limit_warnings(warnings),
    )


def parse_time(text: str) -> datetime:
    """restic's RFC 3339 time with nanoseconds and an offset or Z, as an aware datetime."""
    match = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text.strip())
    if match is None:
        raise EngineError(f"restic printed an unreadable time: {text!r}")
    base, fraction, zone = match.groups()
    fraction = (fraction or "0")[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{base}.{fraction}{'+00:00' if zone == 'Z' else zone}")


def parse_snapshot(doc: Mapping[str, Any]) -> Snapshot:
    summary = doc.get("summary")
    added = summary.get("data_added") if isinstance(summary, dict) else None
    return Snapshot(
        id=str(doc["id"]),
        short_id=str(doc.get("short_id") or str(doc["id"])[:8]),
        time=parse_time(str(doc["time"])),
        host=str(doc.get("hostname", "")),
        paths=tuple(doc.get("paths") or ()),
        tags=tuple(doc.get("tags") or ()),
        bytes_added=int(added) if isinstance(added, int) else None,
    )


def parse_snapshots(doc: Any) -> list[Snapshot]:
    """`snapshots --json` output, oldest first."""
    if not isinstance(doc, list):
        raise EngineError("restic snapshots printed no list")
    try:
        return sorted((parse_snapshot(item) for item in doc), key=lambda s: s.time)
    except (KeyError, TypeError, AttributeError, ValueError):  # not what restic prints
        raise EngineError("restic printed a snapshot list of unexpected shape") from None


def parse_forget(doc: Any) -> ForgetResult:
    """`forget --json` output: one object per group; restic writes null for an empty list."""
    groups = doc if isinstance(doc, list) else []
    try:
        kept = [str(s["id"]) for group in groups for s in group.get("keep") or ()]
        removed = [str(s["id"]) for group in groups for s in group.get("remove") or ()]
    except (KeyError, TypeError, AttributeError):  # not what restic prints
        raise EngineError("restic printed a forget result of unexpected shape") from None
    return ForgetResult(kept=tuple(kept), removed=tuple(removed))


def parse_stats(doc: Any) -> RepositoryStats:
    """`stats --json --mode raw-data`; 0.14 says total_file_count 0, 0.18 omits it."""
    if not isinstance(doc, dict):
        raise EngineError("restic stats printed no object")
    return RepositoryStats(
        total_size=_number(doc, "total_size"),
        total_file_count=_number(doc, "total_file_count"),
        snapshots_count=_number(doc, "snapshots_count"),
    )


# --- failures (pure) ------------------------------------------------------------------

_UNREACHABLE = (
    "connection refused",
    "no such host",
    "i/o timeout",
    "network is unreachable",
    "no route to host",
    "connection reset by peer",
    "tls handshake timeout",
    "context deadline exceeded",
    "client.timeout exceeded",
    "temporary failure in name resolution",
    "server misbehaving",
    "unable to start the sftp session",
    "ssh: connect to host",
    "error talking http to rclone",
)
# The backend answered and refused who we are: retrying cannot help (restic 0.17+ still
# retries some for 15 minutes). Each needle starts the part of the line that is quoted.
_REFUSED = (
    "the aws access key id you provided does not exist",  # S3 InvalidAccessKeyId
    "invalidaccesskeyid",
    "the request signature we calculated does not match",  # S3: wrong secret key
    "signaturedoesnotmatch",
    "access denied",  # S3 AccessDenied: the key may not do this
    "401 unauthorized",  # REST: wrong user or password
    "403 forbidden",
    "permission denied (",  # ssh: "Permission denied (publickey)."
    "unable to authenticate",  # rclone's ssh
)
_HOST_KEY = (
    "host key verification failed",  # ssh
    "remote host identification has changed",
    "knownhosts: key mismatch",  # rclone's ssh
    "knownhosts: key is unknown",
)
# What to check when a backend refuses access, by the scheme of the location.
_CREDENTIALS = {
    "s3": "its AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    "rest": "the user and password in its location",
    "sftp": "the user and key its ssh logs in with (option sftp.command or ~/.ssh/config)",
    "rclone": "the remote in rclone's config file (RCLONE_CONFIG)",
    "b2": "its B2_ACCOUNT_ID and B2_ACCOUNT_KEY",
    "azure": "its AZURE_ACCOUNT_NAME and AZURE_ACCOUNT_KEY",
    "gs": "its GOOGLE_PROJECT_ID and GOOGLE_APPLICATION_CREDENTIALS",
    "swift": "its OS_* (or ST_*) variables",
}
# After this many refused attempts, restic's retries are ended.
REFUSED_RETRIES = 3
# When restic kept no word from ssh or rclone (it may exit before it forwards their
# stderr), what its own line means and what to do.
_SILENT_HELPER = {
    "unable to start the sftp session": "ssh opened no SFTP session: check that the server "
    "is up and accepts the user, key and host key its ssh uses",
    "error talking http to rclone": "rclone could not open the remote: check the remote in "
    "rclone's config file (RCLONE_CONFIG) and that its server is up",
}
_MISSING = (
    "repository does not exist",
    "unable to open config file",
    "is there a repository at the following location",
)


# restic retries a failing backend call and says so first: the cause after the prefix is
# what matters, e.g. "Load(<data/1a2b>, 0, 0) returned error, retrying after 1.2s: <cause>".
# Anchored at the call's name: a line about a file holds its path first.
_RETRYING = re.compile(r"^[A-Z][A-Za-z]*\(.*? returned error, retrying after [^:]*: ")
PARTIAL_BACKUP = 3  # restic's exit code: snapshot saved, some files could not be read
# A Go crash: "panic: ...", "fatal error: ..." or a signal dump ("SIGQUIT: quit"), each
# followed by one stack per goroutine, from "goroutine 1 [running]:" on.
_CRASH = re.compile(r"^(panic: |fatal error: |SIG[A-Z0-9]+: )")
_STACK = re.compile(r"^goroutine \d+ \[")


def _refuse_half_made(target: Target) -> None:
    """Raise EngineError for a local repository with a key and no config: an init ended
    between the two (killed, a full disk). restic 0.14's init would add a second key with
    another master key, and every backup then fail on it ("ciphertext verification
    failed"); 0.17+ refuses, saying only that it has keys. A remote one is left to restic."""
    if scheme_of(target.location) not in ("", "local"):
        return
    repository = Path(target.location.removeprefix("local:"))
    with contextlib.suppress(OSError):  # a whole one made meanwhile (another host) is fine
        if any((repository / "keys").iterdir()) and not (repository / "config").exists():
            raise EngineError(
                f"repository {target.name} has a key but no config: its init was interrupted;"
                " if it holds nothing else, remove it and the next backup makes it anew"
            )


def scheme_of(location: str) -> str:
    """The backend of a restic location ("s3", "sftp", "rest"...); "" for a local path."""
    match = re.match(r"([a-z0-9]+):", location)
    return match[1] if match else ""


def _quoted(lines: Sequence[str], needles: Sequence[str]) -> str | None:
    """The first line holding a needle, from that needle on, on one line."""
    for line in lines:
        low = line.lower()
        for needle in needles:
            if needle in low:
                return _one_line(line[low.index(needle) :])
    return None


def refusal(lines: Sequence[str], repository: str, scheme: str) -> AccessRefused | None:
    """AccessRefused if a line says the backend refused the credentials, that the server
    is not the one known_hosts knows, or that the repository is read-only; None otherwise."""
    where = f"repository {repository}"
    if _first(lines, _HOST_KEY) is not None:
        return AccessRefused(
            f"{where}: the server's host key is not one that known_hosts holds: "
            "make sure it is the right server, then update known_hosts"
        )
    read_only = _quoted(lines, ("read-only file system",))  # restic 0.17+ retries 15 min
    if read_only is not None:
        return AccessRefused(f"{where} cannot be written ({read_only}): mount it read-write")
    refused = _quoted(lines, _REFUSED)
    if refused is None:
        return None
    what = _CREDENTIALS.get(scheme, "its credentials")
    return AccessRefused(f"{where} refused access ({refused}): check {what}")


def refused_retries(messages: Sequence[str], repository: str, scheme: str) -> AccessRefused | None:
    """AccessRefused once restic has retried REFUSED_RETRIES attempts the backend refused."""
    causes = [retry_cause(line) for line in messages if _RETRYING.match(line)]
    refused = [cause for cause in causes if refusal([cause], repository, scheme)]
    if len(refused) < REFUSED_RETRIES:
        return None
    return refusal(refused[-1:], repository, scheme)


def _first(lines: Sequence[str], needles: Sequence[str]) -> str | None:
    for line in lines:
        low = line.lower()
        if any(needle in low for needle in needles):
            return line
    return None


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split()).removeprefix("Fatal: ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def retry_cause(line: str) -> str:
    """A "... returned error, retrying after 1s: CAUSE" line as its CAUSE; others as they are."""
    return _RETRYING.sub("", line, count=1)


def without_stacks(messages: Sequence[str]) -> list[str]:
    """The lines before a Go stack dump (the crash line stays, its frames go)."""
    lines = []
    for line in messages:
        if _STACK.match(line):
            break
        lines.append(line)
    return lines


def ranked(messages: Sequence[str]) -> list[str]:
    """The lines in the order to search them for a reason: restic's own lines first, then
    the causes of its retries, latest first (a retry is not why it finally failed)."""
    lines = without_stacks(messages)
    final = [line for line in lines if not _RETRYING.match(line)]
    retries = [retry_cause(line) for line in reversed(lines) if _RETRYING.match(line)]
    return final + retries


def explanation(messages: Sequence[str]) -> str | None:
    """One line on why restic failed or is stuck: a crash, its first "Fatal:" line, else its
    last line (the cause, if a retry); None if it said nothing."""
    lines = without_stacks(messages)
    crash = next((line for line in lines if _CRASH.match(line)), None)
    if crash is not None:
        return f"restic crashed: {_one_line(crash)}"
    fatal = next((line for line in lines if line.startswith("Fatal:")), None)
    if fatal is not None:
        return _one_line(fatal)
    return _one_line(retry_cause(lines[-1])) if lines else None


def fatal_reason(messages: Sequence[str], returncode: int) -> str:
    """The explanation, else the signal that killed restic, else its exit code."""
    lines = without_stacks(messages)
    if returncode < 0 and not any(_CRASH.match(m) or m.startswith("Fatal:") for m in lines):
        return f"restic was killed by {signal_name(-returncode)}"
    return explanation(lines) or f"exit code {returncode}"


def _unreachable(line: str) -> str:
    """Why a backend is unreachable: the line, or what it means if ssh or rclone said nothing."""
    for needle, meaning in _SILENT_HELPER.items():
        if needle in line.lower():
            return f"{meaning} ({_quoted([line], [needle])})"
    return _one_line(line)


def classify_failure(
    command: str,
    returncode: int,
    messages: Sequence[str],
    repository: str,
    features: Features,
    scheme: str = "",
) -> EngineError:
    """The typed error for a failed restic run on a repository of backend `scheme` (see
    scheme_of). `messages` must already be redacted."""
    where = f"repository {repository}"
    reason = fatal_reason(messages, returncode)
    failed = EngineError(f"restic {command} failed on {where}: {reason}")
    lines = ranked(messages)
    if any(_CRASH.match(line) for line in lines):
        return failed  # whatever its last words, a crash is a crash
    codes = features.exit_codes
    if (codes and returncode == 12) or _first(lines, ("wrong password or no key found",)):
        return WrongPassword(f"wrong password for {where}: check its password setting")
    locked = _first(lines, ("repository is already locked",))
    if (codes and returncode == 11) or locked:
        detail = _one_line((locked or "").removeprefix("unable to create lock in backend: "))
        return RepositoryLocked(f"{where} is locked by another process: {detail}".rstrip(": "))
    if not (codes and returncode == 10):
        refused = refusal(lines, repository, scheme)
        if refused is not None:
            return refused
        unreachable = _first(lines, _UNREACHABLE)
        if unreachable:
            return BackendUnreachable(f"{where} is unreachable: {_unreachable(unreachable)}")
    if (codes and returncode == 10) or _first(lines, _MISSING):
        return RepositoryMissing(f"no restic repository at the location of {where}")
    if _first(lines, ("no matching id found",)):
        return SnapshotNotFound(f"no such snapshot in {where}")
    return failed


# --- running restic -------------------------------------------------------------------


def status_counters(line: str) -> tuple[int, int] | None:
    """Files and bytes done of a backup or restore status line: they move with progress."""
    message = parse_json_line(line) if '"status"' in line else None
    progress = parse_progress(message) if message is not None else None
    return None if progress is None else (progress.files_done, progress.bytes_done)


class _PackMeter:
    """What a running restic has sent, from its temporary packs at each look."""

    def __init__(self) -> None:
        self.packs: list[OpenFile] = []  # its temporary packs at the last look
        self.written = 0  # what it had written then, less its output to us
        self.dropped = 0  # bytes of packs it closed unsent
        self.book = PackBook()

    def measure(self, pid: int, written: int) -> Upload | None:
        found = files_and_sockets(pid, TEMP_PACK)
        if found is None:
            return None
        packs, sockets = found
        self.dropped += dropped_since(self.packs, packs, written - self.written)
        packed, leaving = self.book.see(packs, sockets, written, time.monotonic())
        self.packs, self.written = packs, written
        return upload_of(written, packs, self.dropped, packed, leaving)


class _Stream:
    """Follows JSON lines of backup/restore: forwards progress, keeps the summary. With
    `upload` (a backup), progress counts what restic sent as `upload()` last measured it."""

    def __init__(
        self,
        on_progress: ProgressCallback | None,
        upload: Callable[[], Upload | None] | None = None,
    ) -> None:
        self.on_progress = on_progress
        self.upload = upload
        self.tracker = UploadTracker()
        self.summary: dict[str, Any] | None = None
        self.last: TransferProgress | None = None  # the last progress forwarded

    def feed(self, line: str) -> None:
        message = parse_json_line(line)
        if message is None:
            return
        if message.get("message_type") == "summary":
            self.summary = message
        elif self.on_progress is not None:
            progress = parse_progress(message)
            if progress is not None and self.upload is not None:
                progress = self.tracker.apply(progress, self.upload(), time.monotonic())
            if progress is not None:
                self.last = progress
                self.on_progress(progress)

    def finish(self, summary: Mapping[str, Any], seconds: float) -> None:
        """After a backup's summary: its last progress, all read and sent (restic 0.14 may
        end without a status line saying so)."""
        if self.on_progress is None:
            return
        sent = _number(summary, "data_added_packed") or _number(summary, "data_added")
        files, size = (_number(summary, f"total_{key}_processed") for key in ("files", "bytes"))
        final = finished(self.last, files, size, seconds, sent)
        if final is not None:
            self.on_progress(final)


# Failures after which no unlock is tried: restic cannot have left a lock (it never opened
# Failures after which no unlock is tried: restic cannot have left a lock (it never opened
# the repository, or ended by itself), or the backend is gone (an unlock would only wait
# through restic's retries; a later job's conflict removes the lock).
_NO_UNLOCK_AFTER = (
    WrongPassword,
    RepositoryMissing,
    SnapshotNotFound,
    BackendUnreachable,
    Stalled,  # already unlocked, within UNLOCK_LIMIT, as restic was ended
)


def _ask_version(path: str) -> str:
    """What `restic version` prints. Raises EngineError if restic cannot run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    import subprocess  # in the job process only: see henbackup.process

    try:
        done = subprocess.run(
            [path, "version"], capture_output=True, text=True, env=env, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineError(f"cannot run restic ({path}): {exc}") from None
    return done.stdout


class ResticEngine(ToolEngine):
    """The Engine on a restic binary. Blocking; meant for a job process."""

    tool = "restic"

    def __init__(
        self,
        binary: str = "restic",
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
        self.lock_wait = lock_wait
        self._features: Features | None = None
        self._meter: tuple[ToolRun, _PackMeter] | None = None  # of the running restic
        self._retries: tuple[ToolRun, list[str]] | None = None  # its refused retries so far

    @property
    def features(self) -> Features:
        """From `restic version`, asked once per binary (engine/versions.py). Raises
        EngineError if restic cannot run."""
        if self._features is None:
            text = version_text(self.binary, self.cache_dir, _ask_version)
            self._features = Features(parse_version(text))
        return self._features

    # -- the Engine contract --

    def ensure_initialized(self, target: Target) -> bool:
        try:
            self._call(target, CAT_CONFIG_ARGS, locking=False)
            return False
        except RepositoryMissing:
            pass
        _refuse_half_made(target)
        outcome = self._execute(target, INIT_ARGS, None)
        if outcome.returncode == 0:
            return True
        if _first(outcome.messages, ("config file already exists",)):
            return False  # created meanwhile, from elsewhere: restic wrote nothing of ours
        error = self._failure(target, INIT_ARGS, outcome, ())
        assert error is not None
        raise error

    def backup(
        self, target: Target, request: BackupRequest, on_progress: ProgressCallback | None = None
    ) -> BackupResult:
        # Absolute paths: restic stores the tree as given, and restores (--include) use it.
        request = replace(request, paths=tuple(os.path.abspath(p) for p in request.paths))
        stream = _Stream(on_progress, lambda: self.upload)
        args = backup_args(request, self.features.skip_if_unchanged)
        # Exit 3: some source files could not be read, the snapshot exists anyway.
        outcome = self._call(target, args, on_line=stream.feed, tolerate=(3,))
        if stream.summary is None:
            raise EngineError(f"restic backup to repository {target.name} printed no summary")
        stream.finish(stream.summary, outcome.seconds)
        return parse_backup_summary(stream.summary, outcome.seconds, outcome.messages)

    def snapshots(
        self, target: Target, backup: str | None = None, host: str | None = None
    ) -> list[Snapshot]:
        return parse_snapshots(last_json(self._call(target, snapshots_args(backup, host)).stdout))

    def restore(
        self,
        target: Target,
        snapshot_id: str,
        destination: str,
        includes: tuple[str, ...] = (),
        on_progress: ProgressCallback | None = None,
    ) -> RestoreResult:
        snapshot = self._resolve(target, snapshot_id)
        stream = _Stream(on_progress)
        args = restore_args(snapshot.id, destination, includes)
        outcome = self._call(target, args, on_line=stream.feed)
        # Counted on disk: 0.14 reports nothing, and 0.16+ counts directories as files.
        files, size = count_files(destination, restored_roots(snapshot.paths, includes))
        return RestoreResult(destination, files, size, outcome.seconds)

    def forget(self, target: Target, policy: Retention, backup: str, host: str) -> ForgetResult:
        if not keep_flags(policy):  # no rule keeps everything (0.17+ refuses to run)
            return ForgetResult(tuple(s.id for s in self.snapshots(target, backup, host)), ())
        return parse_forget(last_json(self._call(target, forget_args(policy, backup, host)).stdout))

    def prune(self, target: Target) -> None:
        self._call(target, PRUNE_ARGS)

    def check(self, target: Target, read_data_subset: str | None = None) -> CheckResult:
        # Exit 1 without a typed reason is a failed check, not a failed run.
        outcome = self._call(target, check_args(read_data_subset), tolerate=(1,))
        if outcome.returncode == 0:
            return CheckResult(ok=True)
        return CheckResult(ok=False, errors=limit_warnings(outcome.messages))

    def unlock_stale(self, target: Target) -> None:
        self._call(target, UNLOCK_ARGS, locking=False)

    def stats(self, target: Target) -> RepositoryStats:
        return parse_stats(last_json(self._call(target, STATS_ARGS).stdout))

    # -- helpers --

    def _resolve(self, target: Target, snapshot_id: str) -> Snapshot:
        """The one snapshot an id, a prefix or "latest" names."""
        outcome = self._call(target, snapshots_args(ids=[snapshot_id]))
        found = parse_snapshots(last_json(outcome.stdout))
        if len(found) != 1:
            raise SnapshotNotFound(f"no snapshot {snapshot_id!r} in repository {target.name}")
        return found[0]

    def _call(
        self,
        target: Target,
        args: Argv,
        *,
        on_line: LineHandler | None = None,
        tolerate: tuple[int, ...] = (),
        locking: bool = True,
    ) -> ToolResult:
        """Run restic (see `_run`). A locking command that failed (restic killed, its backend
        gone) may have left its lock: it is removed then, as stale (restic is gone by now)."""
        try:
            return self._run(target, args, on_line=on_line, tolerate=tolerate, locking=locking)
        except EngineError as error:
            if locking and not isinstance(error, _NO_UNLOCK_AFTER):
                with contextlib.suppress(EngineError):  # bounded: the backend may hang too
                    self._execute(target, UNLOCK_ARGS, None, limit=UNLOCK_LIMIT)
            raise

    def _run(
        self,
        target: Target,
        args: Argv,
        *,
        on_line: LineHandler | None = None,
        tolerate: tuple[int, ...] = (),
        locking: bool = True,
    ) -> ToolResult:
        """Run restic; on a lock conflict remove stale locks, then wait up to lock_wait."""
        outcome = self._execute(target, args, on_line)
        error = self._failure(target, args, outcome, tolerate)
        if error is None:
            return outcome
        if not (locking and isinstance(error, RepositoryLocked)):
            raise error
        # A killed job leaves a stale lock: restic's unlock removes only those, never live ones.
        self.unlock_stale(target)
        return self._retry_locked(target, args, on_line, tolerate)

    def _retry_locked(
        self, target: Target, args: Argv, on_line: LineHandler | None, tolerate: tuple[int, ...]
    ) -> ToolResult:
        """Each attempt fails at once while it is locked (not restic's --retry-lock: see
        `_while_locked`)."""

        def attempt() -> ToolResult:
            outcome = self._execute(target, args, on_line)
            error = self._failure(target, args, outcome, tolerate)
            if error is not None:
                raise error
            return outcome

        return self._while_locked(attempt, self.lock_wait)

    def _failure(
        self, target: Target, args: Argv, outcome: ToolResult, tolerate: tuple[int, ...]
    ) -> EngineError | None:
        if outcome.returncode == 0:
            return None
        error = classify_failure(
            args[0],
            outcome.returncode,
            outcome.messages,
            target.name,
            self.features,
            scheme_of(target.location),
        )
        # A backup's exit 3: its snapshot is saved, and its lines name files it could not
        # read, which anyone may name "wrong password or no key found".
        partial = args[0] == "backup" and outcome.returncode == PARTIAL_BACKUP
        if outcome.returncode in tolerate and (partial or type(error) is EngineError):
            return None
        return error

    def _execute(
        self,
        target: Target,
        args: Argv,
        on_line: LineHandler | None,
        limit: float | None = None,
    ) -> ToolResult:
        """Run restic once: stdout line by line, stderr into a temporary file.

        `limit` is for a run that holds no lock (the unlock after an interrupt): after that
        many seconds it is killed and EngineError raised.
        """
        target = with_secret_env(target)  # provider keys: read now, for restic only
        argv = make_command(self.binary, args, global_flags(target, self.cache_dir))
        read_fd = password_pipe(target.password)
        try:
            env = child_env(os.environ, target, password_env(target.password, read_fd))
        except BaseException:
            if read_fd is not None:
                os.close(read_fd)
            raise
        return self._launch(argv, env, target, on_line, password_fd=read_fd, limit=limit)

    # -- what run.py asks of restic --

    def _messages(self, text: str, target: Target) -> list[str]:
        redact = Redactor.of(secrets_of(target))
        return [redact(m) for m in stderr_messages(text)]

    def _counters(self, line: str) -> object | None:
        return status_counters(line)

    def _refused(self, run: ToolRun, target: Target) -> AccessRefused | None:
        """AccessRefused once restic retried REFUSED_RETRIES refused attempts (0.17+ retries
        a wrong key for 15 minutes); the retry lines of this run are kept meanwhile."""
        if self._retries is None or self._retries[0] is not run:
            self._retries = (run, [])
        new = [m for m in self._messages(run.new_other_text(), target) if _RETRYING.match(m)]
        if not new:
            return None
        retries = self._retries[1]
        retries += new
        return refused_retries(retries, target.name, scheme_of(target.location))

    def _measure(self, run: ToolRun, written: int) -> Upload | None:
        if self._meter is None or self._meter[0] is not run:
            self._meter = (run, _PackMeter())
        return self._meter[1].measure(run.process.pid, written)

    def _explain_idle(self, run: ToolRun, target: Target) -> str | None:
        return explanation(self._messages(read_back(run.other), target))

    def _cleanup(self, target: Target) -> None:
        """The unlock matters even after a clean exit: restic 0.14 interrupted within its
        first ~200 ms after writing its lock (before it registers the lock for clean-up)
        exits at once and leaves the lock behind. Its process is gone, so the lock is stale.
        The unlock is bounded: if the backend hangs, the next run removes the lock."""
        with contextlib.suppress(EngineError):
            self._execute(target, UNLOCK_ARGS, None, limit=UNLOCK_LIMIT)
