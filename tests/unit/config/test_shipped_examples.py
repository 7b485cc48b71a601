"""The shipped examples (etc/henbackup.toml, etc/providers.toml with the drop-in
etc/henbackup-credentials.conf, and the package's idle /etc/henbackup/henbackup.toml) pass
`henbackup check-config` as shipped, once the files they name exist, root's and mode 0600,
with the variables their comments show: no problem, no note, no warning. Their
/etc/henbackup/ is moved under the test's directory."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from henbackup.cli.daemon import main

ROOT = Path(__file__).resolve().parents[3]
ETC = ROOT / "etc"
PREFIX = "/etc/henbackup/"
SHOWN_FILE = re.compile(r"^# (/etc/henbackup/\S+) \(root's, mode 0600\):$")
SHOWN_VARIABLE = re.compile(r"^#   ([A-Za-z_][A-Za-z0-9_]*=.*)$")
LOAD_CREDENTIAL = re.compile(r"^LoadCredential=([^:]+):(/\S+)$", re.MULTILINE)


def shown_contents(text: str) -> dict[str, str]:
    """Each file whose content a comment shows (its KEY=value lines, indented)."""
    contents: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if match := SHOWN_FILE.match(line):
            current = match[1]
            contents[current] = ""
        elif current and (match := SHOWN_VARIABLE.match(line)):
            contents[current] += match[1] + "\n"
        else:
            current = None
    return contents


def secret(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)


@pytest.mark.parametrize(
    "example", ["henbackup.toml", "providers.toml", "../packaging/debian/henbackup.toml"]
)
def test_a_shipped_example_passes_check_config_once_its_files_exist(
    example, tmp_path, monkeypatch, capsys
):
    root = tmp_path / "root"
    text = (ETC / example).read_text()
    contents = shown_contents(text)
    named = set(re.findall(r'"(/etc/henbackup/[^"]+)"', text))
    assert set(contents) <= named, "a comment shows a file the configuration does not name"
    for path in named:
        secret(root / path.lstrip("/"), contents.get(path, "a secret\n"))
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    dropin = (ETC / "henbackup-credentials.conf").read_text()
    for name, source in LOAD_CREDENTIAL.findall(dropin):
        secret(root / source.lstrip("/"), f"the credential {name}\n")
        shutil.copy(root / source.lstrip("/"), credentials / name)  # as systemd does
    config = tmp_path / Path(example).name
    config.write_text(text.replace(PREFIX, f"{root}{PREFIX}"))
    config.chmod(0o600)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))

    assert main(["--config", str(config), "check-config"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith(f"Files\n  read            {config}\n")
