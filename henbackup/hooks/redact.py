"""Keep secrets out of hook events: bounded output, known secret values replaced.

The secrets of a hook are what it was given: its env values, the values of its
Authorization-like headers, the password-ish query parameters and the password in its URL,
and every text that ${NAME} brought into it from the environment.
"""

from __future__ import annotations

import re
from base64 import b64encode
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from henbackup.config.model import CommandHook, Hook, HttpHook

REDACTED = "<redacted>"
OUTPUT_LIMIT = 4096  # bytes of output kept: the end, where the error usually is
TRUNCATED = "[…output truncated…]\n"

# A name that says its value is a secret: env variables, headers, query parameters.
SECRET_NAME = re.compile(r"pass|pwd|secret|token|key|auth|credential|cookie|session|sig", re.I)
# Short values (e.g. DEBUG=1) are only secrets when their name says so.
MIN_SECRET_LENGTH = 4
_SECRET_QUERY = re.compile(
    r"([?&;][^=&\s#]*(?:pass|pwd|secret|token|key|auth|sig)[^=&\s#]*=)[^&\s#;]+", re.I
)


@dataclass(frozen=True)
class Redactor:
    """Replaces known secret values with <redacted>, longest first."""

    secrets: tuple[str, ...] = ()

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return _SECRET_QUERY.sub(rf"\g<1>{REDACTED}", text)

    @classmethod
    def of(cls, values: Iterable[str]) -> Redactor:
        return cls(tuple(sorted({v for v in values if v}, key=len, reverse=True)))

    def cut_fragment(self, text: str) -> str:
        """`text` without a leading end-part of a secret (left where output was truncated)."""
        for secret in self.secrets:
            for size in range(len(secret) - 1, 0, -1):
                if text.startswith(secret[-size:]):
                    return text[size:]
        return text


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
    if parts.password:
        credentials = f"{unquote(parts.username or '')}:{unquote(parts.password)}".encode()
        values += [parts.password, unquote(parts.password), b64encode(credentials).decode()]
    return values


def redact_url(url: str) -> str:
    """`url` with its password and password-ish query values replaced by <redacted>."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:{REDACTED}@{netloc.rpartition('@')[2]}"
    query = "&".join(
        f"{quote(k, safe='')}={REDACTED if SECRET_NAME.search(k) else quote(v, safe='')}"
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


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
