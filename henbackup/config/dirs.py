"""Where henbackup keeps its files, as systemd's directory settings say (henbackup(8), FILES)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CONFIG = Path("/etc/henbackup/henbackup.toml")


def _first(value: str | None, default: str) -> Path:
    # systemd sets e.g. RUNTIME_DIRECTORY="/run/a:/run/b" when several are configured.
    return Path(value.split(":")[0]) if value else Path(default)


@dataclass(frozen=True)
class Dirs:
    runtime: Path  # control socket, scheduler lock files
    state: Path  # last runs, restores
    cache: Path  # restic's cache

    @property
    def scheduler(self) -> Path:
        """The host-wide job queue's directory."""
        return self.runtime / "scheduler"

    @property
    def repositories(self) -> Path:
        """Host-wide locks per repository location (one `restic init` at a time)."""
        return self.runtime / "repositories"

    @property
    def known_repositories(self) -> Path:
        """A mark per repository location this host backed up to (kept across reboots)."""
        return self.state / "repositories"

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ) -> Dirs:
        return cls(
            runtime=_first(env.get("RUNTIME_DIRECTORY"), "/run/henbackup"),
            state=_first(env.get("STATE_DIRECTORY"), "/var/lib/henbackup"),
            cache=_first(env.get("CACHE_DIRECTORY"), "/var/cache/henbackup"),
        )


def config_path(cli_value: str | None, env: Mapping[str, str] = os.environ) -> Path:
    """The main config file: --config, else $HENBACKUP_CONFIG, else /etc/henbackup's."""
    if cli_value:
        return Path(cli_value)
    return Path(env["HENBACKUP_CONFIG"]) if env.get("HENBACKUP_CONFIG") else DEFAULT_CONFIG
