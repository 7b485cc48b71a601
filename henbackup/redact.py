"""Secrets out of every message: one marker, <redacted>, wherever a secret was.

A `Redactor` knows the secret values of one run (a repository's location and password, a
hook's env values and credentials) and hides them, longer first, along with what looks
like a secret without being known: password-ish query values and a URL's user:password@.
`redact_url` and `redact_location` hide the credentials of one URL or repository location.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

MARKER = "<redacted>"

# A name that says its value is a secret: env variables, headers, query parameters.
SECRET_NAME = re.compile(r"pass|pwd|secret|token|key|auth|credential|cookie|session|sig", re.I)
# Short values (e.g. DEBUG=1) are only secrets when their name says so.
MIN_SECRET_LENGTH = 4
_SECRET_QUERY = re.compile(
    r"([?&;][^=&\s#]*(?:pass|pwd|secret|token|key|auth|sig)[^=&\s#]*=)[^&\s#;]+", re.I
)
# The userinfo of a URL inside a message: "//user:pw@".
_USERINFO = re.compile(r"//[^/@\s]+@")
# A location's userinfo: "https://user:pw@host/". Up to the last "@" of the whole location,
# as a password may hold an unencoded "/" or "@": hiding too much beats showing a secret.
_LOCATION_USERINFO = re.compile(r"(://).*@", re.DOTALL)


@dataclass(frozen=True)
class Redactor:
    """Replaces known secret values (longest first), secret query values and a URL's
    userinfo with the marker."""

    secrets: tuple[str, ...] = ()

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if len(secret) >= MIN_SECRET_LENGTH:
                text = text.replace(secret, MARKER)
            else:  # "p" inside "open" is no leak, and hiding it would garble every message
                text = re.sub(rf"(?<!\w){re.escape(secret)}(?!\w)", MARKER, text)
        text = _SECRET_QUERY.sub(rf"\g<1>{MARKER}", text)
        return _USERINFO.sub(f"//{MARKER}@", text)

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


def redact_url(url: str) -> str:
    """`url` with its password and password-ish query values replaced by the marker."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:{MARKER}@{netloc.rpartition('@')[2]}"
    query = "&".join(
        f"{quote(k, safe='')}={MARKER if SECRET_NAME.search(k) else quote(v, safe='')}"
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact_location(location: str) -> str:
    """`location` with the user:password@ (or token@) of its URL replaced by the marker."""
    return _LOCATION_USERINFO.sub(rf"\g<1>{MARKER}@", location)
