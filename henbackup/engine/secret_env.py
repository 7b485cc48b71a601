"""Provider keys at rest: a repository's env_file and its systemd credentials.

They are read here, by the job process, each time restic is about to start, and go into
restic's environment only: never the daemon's, an event, argv or a message (the values
join the target's secrets, which restic's messages are cleaned of). check-config reads an
env_file for its variable names. Errors name the file and the line, never a value.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from henbackup.engine.base import Target
from henbackup.errors import EngineError

_LINE_RE = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)")
# An env_file or a credential bigger than this is not one of keys.
MAX_BYTES = 1024 * 1024


def parse_env_file(text: str, path: str) -> dict[str, str]:
    """The variables of an env_file: KEY=value lines; blank lines and #-comments skipped;
    `export ` before KEY and one pair of quotes around the value are allowed (as a shell
    file would have them). Raises EngineError naming the first malformed line."""
    variables = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE_RE.fullmatch(line)
        if match is None:
            raise EngineError(
                f"{path}: line {number} is not KEY=value (a variable name of letters, digits"
                " and _, then =): fix or remove it"
            )
        variables[match[1]] = _unquoted(match[2])
    return variables


def _unquoted(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _read(path: str, what: str) -> str:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_BYTES + 1)
    except FileNotFoundError:
        fix = "create it (root's, mode 0600) or fix the path"
        raise EngineError(f"{what} {path} does not exist: {fix}") from None
    except OSError as error:
        raise EngineError(f"{what} {path} cannot be read: {error.strerror}") from None
    if len(data) > MAX_BYTES:
        raise EngineError(f"{what} {path} is over {MAX_BYTES // 1024} KiB: is it the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise EngineError(f"{what} {path} is not UTF-8 text: save it as UTF-8") from None


def read_env_file(path: str) -> dict[str, str]:
    """The variables of the env_file at `path`; raises EngineError (file, line, no value)."""
    return parse_env_file(_read(path, "env_file"), path)


def read_credential(path: str) -> str:
    """A credential's value: the file without its final line break."""
    text = _read(path, "the credential")
    return text[:-1] if text.endswith("\n") else text


def with_secret_env(target: Target) -> Target:
    """`target` whose env also holds its env_file's variables, then those of its credentials
    (each overrides what came before, as systemd's EnvironmentFile= overrides Environment=)."""
    if target.env_file is None and not target.env_credentials:
        return target
    env = dict(target.env)
    if target.env_file is not None:
        env.update(read_env_file(target.env_file))
    for variable, path in target.env_credentials:
        if not Path(path).is_file():
            raise EngineError(
                f"the credential {Path(path).name} for {variable} is not there: load it with"
                " LoadCredential= in henbackup.service (systemctl edit henbackup)"
            )
        env[variable] = read_credential(path)
    return replace(target, env=tuple(env.items()), env_file=None, env_credentials=())
