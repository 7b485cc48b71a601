"""What of a hook may reach its events: bounded output, the secrets it was given redacted.

The secrets of a hook are what it was given: its env values, the values of its
Authorization-like headers, the password-ish query parameters and the password in its URL,
and every text that ${NAME} brought into it from the environment.
"""

from __future__ import annotations

from base64 import b64encode
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from henbackup.config.model import CommandHook, Hook, HttpHook
from henbackup.redact import MIN_SECRET_LENGTH, SECRET_NAME, Redactor

OUTPUT_LIMIT = 4096  # bytes of output kept: the end, where the error usually is
TRUNCATED = "[…output truncated…]\n"


def hook_secrets(hook: Hook) -> Redactor:
    """The redactor of everything `hook` was given that may be a secret."""
    if isinstance(hook, CommandHook):
        return Redactor.of([*_env_secrets(hook.env), *hook.secrets])
    return Redactor.of([*_header_secrets(hook), *_url_secrets(hook.url), *hook.secrets])


def _env_secrets(env: Iterable[tuple[str, str]]) -> list[str]:
    return [v for k, v in env if len(v) >= MIN_SECRET_LENGTH or SECRET_NAME.search(k)]


def _header_secrets(hook: HttpHook) -> list[str]:
    values = []
    for name, value in hook.headers:
        if SECRET_NAME.search(name):
            values.append(value)
            values.extend(part for part in value.split()[1:] if len(part) >= MIN_SECRET_LENGTH)
    return values


def _url_secrets(url: str) -> list[str]:
    parts = urlsplit(url)
    values = [v for k, v in parse_qsl(parts.query) if SECRET_NAME.search(k)]
    credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode()
    if parts.password:
        values += [parts.password, unquote(parts.password), b64encode(credentials).decode()]
    elif parts.username and len(parts.username) >= MIN_SECRET_LENGTH:  # a token as the user
        values += [parts.username, unquote(parts.username), b64encode(credentials).decode()]
    return values


@dataclass
class Tail:
    """The last `limit` bytes of a stream; remembers whether anything was cut."""

    limit: int = OUTPUT_LIMIT
    data: bytearray = field(default_factory=bytearray)
    truncated: bool = False

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[: len(self.data) - self.limit]
            self.truncated = True


def clean_output(raw: bytes, truncated: bool, redactor: Redactor) -> str:
    """Hook output fit for an event: decoded, cut at a line start if truncated, redacted.

    Cutting at the first line break (or past a secret's fragment) keeps the end of a
    secret split by truncation from slipping through.
    """
    text = raw.decode("utf-8", errors="replace")
    if truncated:
        head, newline, rest = text.partition("\n")
        text = rest if newline else redactor.cut_fragment(head)
    text = redactor(text).rstrip("\n")
    return TRUNCATED + text if truncated else text
