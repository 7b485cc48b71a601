import pytest

from henbackup.cli.daemon import main

VALID = """
[repositories.local]
location = "/srv/restic"
password = "not-shown"

[backups.pictures]
paths = ["/home/me/Pictures"]
repositories = ["local"]
schedule = ["1d"]
"""

FIVE_MISTAKES = """
[daemon]
max_concurent_jobs = 2

[repositories.local]
location = "/srv/restic"
password = "x"
password_file = "/etc/henbackup/secret"

[backups.pictures]
paths = ["/home/me/Pictures"]
repositories = ["lcoal"]
schedule = ["1x"]
upload_limit = "${HENBACKUP_TEST_UNSET_VARIABLE}"
"""


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.delenv("HENBACKUP_TEST_UNSET_VARIABLE", raising=False)

    def write(text: str) -> str:
        path = tmp_path / "henbackup.toml"
        path.write_text(text)
        return str(path)

    return write


def test_a_valid_config_prints_the_plan_and_exits_0(config, capsys):
    assert main(["--config", config(VALID), "check-config"]) == 0
    out, err = capsys.readouterr()
    assert "pictures" in out
    assert "local" in out
    assert "not-shown" not in out
    assert err == ""


def test_every_problem_is_one_line_with_file_and_key_path(config, capsys):
    path = config(FIVE_MISTAKES)
    assert main(["--config", path, "check-config"]) == 1
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == ""
    assert len(lines) == 5, err
    assert all(line.startswith(f"{path}: ") for line in lines)
    keys = {line.removeprefix(f"{path}: ").split(":")[0] for line in lines}
    assert keys == {
        "daemon.max_concurent_jobs",
        "repositories.local",
        "backups.pictures.repositories[0]",
        "backups.pictures.schedule[0]",
        "backups.pictures.upload_limit",
    }


def test_a_missing_config_file_is_one_clear_line(tmp_path, capsys):
    missing = tmp_path / "nowhere.toml"
    assert main(["--config", str(missing), "check-config"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert str(missing) in err


def test_an_unknown_backup_is_a_usage_error(config, capsys):
    assert main(["--config", config(VALID), "backup", "music"]) == 2
    assert capsys.readouterr().err == ("henbackup: no backup named 'music' (defined: pictures)\n")


def test_the_config_path_comes_from_the_environment(config, monkeypatch, capsys):
    monkeypatch.setenv("HENBACKUP_CONFIG", config(VALID))
    assert main(["check-config"]) == 0
