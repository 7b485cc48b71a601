"""Secrets at rest (henbackup.toml(5), SECRETS): the daemon says once at start, in the
journal, which secrets anyone but root may read, with the fix; it runs anyway."""

from __future__ import annotations

import os

from test_service import UNIT, Daemon, daemon  # noqa: F401 (a fixture)


def test_a_readable_password_is_told_once_at_start_with_its_fix(daemon: Daemon) -> None:  # noqa: F811
    secret = daemon.tmp / "nas.password"
    secret.write_text("pw-nas\n")
    os.chown(secret, 0, 100)  # group users
    secret.chmod(0o640)
    config = daemon.config
    text = (
        f'[repositories.local]\nlocation = "{daemon.tmp / "local"}"\npassword = "pw-local"\n'
        f'[repositories.nas]\nlocation = "{daemon.tmp / "nas"}"\npassword_file = "{secret}"\n'
        f'[backups.pictures]\npaths = ["{daemon.data}"]\nrepositories = ["local", "nas"]\n'
    )
    daemon.write_config(text)
    config.chmod(0o644)
    daemon.install()
    daemon.start()
    daemon.events("daemon.started")
    daemon.harness.systemctl("reload", UNIT)
    daemon.events("config.reloaded")
    told = daemon.harness.journal({"HENBACKUP_EVENT": "secret.exposed"})
    fix = f"chown root:root {config} && chmod 0600 {config}"
    expected = [
        (
            "repositories.local.password",
            f"the password is in a file everyone (mode 0644) can read or change: {fix}, or move"
            " it to password_file or password_credential",
        ),
        (
            "repositories.nas.password_file",
            f"{secret} can be read or changed by group users (mode 0640): chown root:root"
            f" {secret} && chmod 0600 {secret}",
        ),
    ]
    assert [(e["HENBACKUP_KEY"], e["HENBACKUP_ERROR"]) for e in told] == expected
    assert [(e["HENBACKUP_CONFIG"], e["PRIORITY"]) for e in told] == [(str(config), "4")] * 2
    assert [e["MESSAGE"] for e in told] == [
        f"{config}: {key}: warning: {message}" for key, message in expected
    ]
    assert daemon.harness.show(UNIT, "ActiveState")["ActiveState"] == "active"
