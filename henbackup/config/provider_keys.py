"""check-config's look at each repository's provider keys: its env_file can be read and is
well formed, and restic's backend (engine/restic_backends.py) finds the variables it needs
among those of env, env_file and env_credentials. Only names are used: no value is shown.
The daemon never reads an env_file: its job processes do, as restic starts. And its
password's file or program is there (never read: only the job processes read it).
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field

from henbackup.config.convert import CREDENTIALS_PLACEHOLDER
from henbackup.config.model import Config, Repository
from henbackup.engine.restic_backends import missing_variables
from henbackup.engine.secret_env import read_env_file
from henbackup.errors import EngineError, Problem


@dataclass(frozen=True)
class ProviderReport:
    problems: list[Problem] = field(default_factory=list)  # check-config fails
    notes: list[Problem] = field(default_factory=list)  # what only root or the service sees
    warnings: list[Problem] = field(default_factory=list)  # variables restic may lack


def provider_report(config: Config, env: Mapping[str, str] = os.environ) -> ProviderReport:
    """What check-config says of the provider keys of every repository of `config`; `env`
    tells whether CREDENTIALS_DIRECTORY is set (else credentials are the service's)."""
    report = ProviderReport()
    for repository in config.repositories.values():
        _password_source(repository, env, report)
        names = _variable_names(repository, env, report)
        if names is not None and repository.engine == "restic":  # restic's backends' keys
            for line in missing_variables(repository.location, names):
                report.warnings.append(Problem(repository.file, repository.key, f"warning: {line}"))
    return report


def _password_source(
    repository: Repository, env: Mapping[str, str], report: ProviderReport
) -> None:
    """Whether the password's file (or credential) or program is there: every job fails
    without it."""
    source, at = repository.password, (repository.file, repository.password.key)
    if source.kind == "command":
        try:
            program = (shlex.split(source.value) or [""])[0]
        except ValueError:  # unbalanced quotes: restic splits it its own way
            return
        if program and shutil.which(program) is None:
            message = f"warning: its program {program} is not found: install it or fix the path"
            report.warnings.append(Problem(*at, message))
        return
    if source.kind != "file":
        return
    path = source.value
    if path.startswith(CREDENTIALS_PLACEHOLDER + "/") and "CREDENTIALS_DIRECTORY" not in env:
        return  # a credential of the service's: its note is already printed
    try:
        found = os.stat(path)
    except FileNotFoundError:
        if source.key.endswith("password_credential"):
            name = os.path.basename(path)
            message = f"the credential {name} is not loaded: {_LOAD.format(name=name)}"
            report.problems.append(Problem(*at, message))
        else:  # as a missing env_file: the example as copied checks
            message = f"warning: {path} does not exist: create it (root's, mode 0600)"
            report.warnings.append(Problem(*at, message))
        return
    except OSError:
        return  # secrets.py's look says why (a directory it may not enter)
    if not stat.S_ISREG(found.st_mode):
        report.problems.append(Problem(*at, f"{path} is not a file: name the password's file"))
    elif found.st_size == 0:
        message = f"warning: {path} is empty: write the password in it (restic refuses none)"
        report.warnings.append(Problem(*at, message))


_LOAD = "add LoadCredential={name}:PATH to henbackup.service (a drop-in)"


def _variable_names(
    repository: Repository, env: Mapping[str, str], report: ProviderReport
) -> set[str] | None:
    """The variables the repository gives restic; None when its env_file cannot be seen."""
    names = {name for name, _ in repository.env}
    names |= {name for name, _ in repository.env_credentials}
    if "CREDENTIALS_DIRECTORY" in env:  # the service's, or given: its files must be there
        for variable, path in repository.env_credentials:
            if not os.path.isfile(path):
                credential = os.path.basename(path)
                message = f"the credential {credential} is not loaded: " + _LOAD.format(
                    name=credential
                )
                key = f"{repository.key}.env_credentials.{variable}"
                report.problems.append(Problem(repository.file, key, message))
    path = repository.env_file
    if path is None:
        return names
    key = f"{repository.key}.env_file"
    if path.startswith(CREDENTIALS_PLACEHOLDER + "/") and "CREDENTIALS_DIRECTORY" not in env:
        return None  # a credential of the service's: its note is already printed
    if not os.path.exists(path):  # like a missing password_file: the job will fail on it
        message = f"warning: env_file {path} does not exist: create it (root's, mode 0600)"
        report.warnings.append(Problem(repository.file, key, message))
        return None
    if not os.access(path, os.R_OK):
        message = "note: cannot be read as this user: run check-config as root to check it"
        report.notes.append(Problem(repository.file, key, message))
        return None
    try:
        return names | set(read_env_file(path))
    except EngineError as error:
        report.problems.append(Problem(repository.file, key, str(error)))
        return None
