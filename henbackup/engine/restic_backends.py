"""Which environment variables restic's cloud backends read to authenticate.

restic's knowledge, kept beside engine/restic.py (the names are those of restic's manual,
"Preparing a new repository" and "Environment Variables", and of its backends' code, for
0.14 to 0.18). check-config asks `missing_variables` which variables a repository lacks,
given the names its env, env_file and env_credentials set.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

# A requirement: any one of these variables (most are a single name).
Need = tuple[str, ...]


@dataclass(frozen=True)
class Way:
    """One way a backend authenticates: every need of it met."""

    label: str
    needs: tuple[Need, ...]

    def unmet(self, names: Collection[str]) -> list[Need]:
        return [need for need in self.needs if not any(name in names for name in need)]


@dataclass(frozen=True)
class Backend:
    scheme: str  # the location's prefix, before its first ":"
    ways: tuple[Way, ...]  # the first is the usual one
    without: str = ""  # when restic may authenticate with none of them


_OS_AUTH = ("OS_AUTH_URL",)
BACKENDS = {
    backend.scheme: backend
    for backend in (
        Backend(
            "s3",
            (
                Way("access key", (("AWS_ACCESS_KEY_ID",), ("AWS_SECRET_ACCESS_KEY",))),
                Way("shared credentials file", (("AWS_SHARED_CREDENTIALS_FILE",),)),
                Way("profile of ~/.aws/credentials", (("AWS_PROFILE",),)),
            ),
            without="an EC2 instance role needs none",
        ),
        Backend(
            "swift",
            (
                Way(
                    "Keystone v2/v3 password",
                    (
                        _OS_AUTH,
                        ("OS_USERNAME", "OS_USER_ID"),
                        ("OS_PASSWORD",),
                        ("OS_PROJECT_NAME", "OS_TENANT_NAME", "OS_TENANT_ID"),
                    ),
                ),
                Way(
                    "Keystone v3 application credential",
                    (
                        _OS_AUTH,
                        ("OS_APPLICATION_CREDENTIAL_ID", "OS_APPLICATION_CREDENTIAL_NAME"),
                        ("OS_APPLICATION_CREDENTIAL_SECRET",),
                    ),
                ),
                Way("Keystone v1", (("ST_AUTH",), ("ST_USER",), ("ST_KEY",))),
                Way("token", (("OS_STORAGE_URL",), ("OS_AUTH_TOKEN",))),
            ),
        ),
        Backend("b2", (Way("application key", (("B2_ACCOUNT_ID",), ("B2_ACCOUNT_KEY",))),)),
        Backend(
            "azure",
            (
                Way(
                    "account key or SAS",
                    (("AZURE_ACCOUNT_NAME",), ("AZURE_ACCOUNT_KEY", "AZURE_ACCOUNT_SAS")),
                ),
            ),
            without="restic 0.16 or later on Azure may use a managed identity",
        ),
        Backend(
            "gs",
            (
                Way(
                    "service account key",
                    (("GOOGLE_PROJECT_ID",), ("GOOGLE_APPLICATION_CREDENTIALS",)),
                ),
                Way("access token", (("GOOGLE_ACCESS_TOKEN",),)),
            ),
            without="on Google Cloud, the instance's service account needs none",
        ),
    )
}


def backend_of(location: str) -> Backend | None:
    """The cloud backend of a restic location, None for a path, sftp:, rest:, rclone:..."""
    scheme, colon, _ = location.partition(":")
    return BACKENDS.get(scheme) if colon else None


def missing_variables(location: str, names: Collection[str]) -> list[str]:
    """One line per variable (or choice of variables) that restic's backend for `location`
    still needs, given the variables `names` set: those of the way closest to complete.
    Empty when a way is complete, or when the backend needs no variable."""
    backend = backend_of(location)
    if backend is None:
        return []
    unmet = [way.unmet(names) for way in backend.ways]
    if any(not needs for needs in unmet):
        return []
    # The way with the most needs met; the first (the usual one) on a tie.
    met = [len(way.needs) - len(needs) for way, needs in zip(backend.ways, unmet, strict=True)]
    closest = min(range(len(unmet)), key=lambda i: (-met[i], i))
    way = backend.ways[closest]
    others = [other.label for other in backend.ways if other is not way]
    also = f"; or use its {' or '.join(others)}" if others else ""
    also += f"; {backend.without}" if backend.without else ""
    return [
        f"{backend.scheme} ({way.label}) needs {' or '.join(need)}: set it in env_file,"
        f" env_credentials or env{also}"
        for need in unmet[closest]
    ]
