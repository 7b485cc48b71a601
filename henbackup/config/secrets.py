"""Secrets at rest: the files that anyone but root may read or change, though they hold a
password or say what runs as root. `check-config` prints them, the daemon tells them once
at start (secret.exposed events); neither refuses to run, so a fix never stops backups.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from henbackup.config.model import CommandHook, Config
from henbackup.config.problems import Expanded
from henbackup.errors import Problem
from henbackup.redact import SECRET_NAME

SECRET_BITS = 0o066  # group or others may read or write
WRITE_BITS = 0o022  # group or others may write


@dataclass(frozen=True)
class Exposure:
    """One file someone but root may read or change: where it is named, what to do."""

    file: str  # the config file
    key: str  # the key naming the secret; "" for the config file itself
    message: str  # who may, and the fix

    def __str__(self) -> str:
        return str(Problem(self.file, self.key, f"warning: {self.message}"))


def exposures(config: Config) -> list[Exposure]:
    """Every exposed secret or config file of `config`, in file order."""
    found = []
    for path in config.files:  # hooks and password_command run as root: whatever it says
        who = _who_else(Path(path), WRITE_BITS)
        if who:
            fix = f"chown root:root {path} && chmod go-w {path}"
            message = f"can be changed by {who}, and the commands it names run as root: {fix}"
            found.append(Exposure(str(path), "", message))
    for repository in config.repositories.values():
        source = repository.password
        if source.kind == "password" and source.file:
            who = _who_else(Path(source.file), SECRET_BITS)
            if who:
                fix = f"chown root:root {source.file} && chmod 0600 {source.file}"
                message = (
                    f"the password is in a file {who} can read or change: {fix}, or move it"
                    " to password_file or password_credential"
                )
                found.append(Exposure(source.file, source.key, message))
        elif source.kind == "file":
            found += _secret_file(source.value, source.file, source.key)
        if repository.env_file:
            key = f"{repository.key}.env_file"
            found += _secret_file(repository.env_file, repository.file, key)
        for variable, path in repository.env_credentials:
            key = f"{repository.key}.env_credentials.{variable}"
            found += _secret_file(path, repository.file, key)
        found += _written_here(
            repository.file,
            f"{repository.key}.env",
            repository.env,
            " (or env_file, env_credentials)",
        )
    for backup in config.backups.values():
        for phase in ("before", "after", "failure"):
            for index, hook in enumerate(getattr(backup.hooks, phase)):
                at = f"{backup.key}.hooks.{phase}[{index}]"
                if isinstance(hook, CommandHook):
                    found += _written_here(backup.file, f"{at}.env", hook.env)
                else:
                    found += _written_here(backup.file, f"{at}.headers", hook.headers)
    return found


def _written_here(
    file: str, key: str, pairs: Iterable[tuple[str, str]], elsewhere: str = ""
) -> list[Exposure]:
    """The exposure of keys or tokens written in `file` itself (not brought by ${NAME}), if
    anyone but root may read it."""
    names = [n for n, v in pairs if SECRET_NAME.search(n) and not isinstance(v, Expanded)]
    who = _who_else(Path(file), SECRET_BITS) if names and file else None
    if not who:
        return []
    message = (
        f"{', '.join(names)} written in a file {who} can read: chmod 0600 {file}, or bring"
        f" {'them' if len(names) > 1 else 'it'} in as ${{NAME}} from the unit's environment"
        + elsewhere
    )
    return [Exposure(file, key, message)]


def _secret_file(path: str, file: str, key: str) -> list[Exposure]:
    """The exposure of a file of secrets, if anyone but root may read or change it."""
    who = _who_else(Path(path), SECRET_BITS)
    if not who:
        return []
    fix = f"chown root:root {path} && chmod 0600 {path}"
    return [Exposure(file, key, f"{path} can be read or changed by {who}: {fix}")]


def _who_else(path: Path, bits: int) -> str | None:
    """Who but root (or this process's user) may use `path` as `bits` of its group and
    others say; None if nobody, or if it cannot be seen (a missing file is another error)."""
    try:
        st = path.stat()
    except OSError:
        return None
    mode = f"mode {stat.S_IMODE(st.st_mode):04o}"
    if st.st_uid not in (0, os.geteuid()):
        return f"its owner {_user(st.st_uid)}"
    if st.st_mode & bits & 0o007:
        return f"everyone ({mode})"
    if st.st_mode & bits & 0o070 and st.st_gid != 0:
        return f"group {_group(st.st_gid)} ({mode})"
    return None


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"
