"""What the restic engine's tests share: versions, secrets, a target."""

from __future__ import annotations

from henbackup.config.model import PasswordSource
from henbackup.engine.base import Target
from henbackup.engine.restic import Features

V014 = Features((0, 14, 0))
V018 = Features((0, 18, 0))

SECRET_PASSWORD = "hunter2-$'\"`;|&"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
REST_LOCATION = "rest:http://user:s3cr3t@127.0.0.1:1/repo"


def target(**overrides: object) -> Target:
    fields: dict[str, object] = {
        "name": "aws-ireland",
        "location": "s3:s3.eu-west-1.amazonaws.com/bucket/pictures",
        "password": PasswordSource("password", SECRET_PASSWORD),
        "env": (
            ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ),
    }
    fields.update(overrides)
    return Target(**fields)  # type: ignore[arg-type]
