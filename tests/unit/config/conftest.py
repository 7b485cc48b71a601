"""Helpers that write config files into tmp_path and load them."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from henbackup.config.load import load_config
from henbackup.config.model import Config
from henbackup.errors import ConfigError

WriteConfig = Callable[..., Path]


def write_files(root: Path, main: str | None, extra: Mapping[str, str]) -> Path:
    """Write henbackup.toml (unless main is None) and extra files (e.g. "conf.d/10-a.toml")
    under root; returns the main file's path. Text is dedented."""
    root.mkdir(parents=True, exist_ok=True)
    for name, text in {"henbackup.toml": main, **extra}.items():
        if text is None:
            continue
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root / "henbackup.toml"


@pytest.fixture(scope="session")
def files_writer() -> Callable[[Path, str | None, Mapping[str, str]], Path]:
    """write_files itself, for tests (such as hypothesis ones) that make their own dirs."""
    return write_files


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    """write_config(main_text, **{"conf.d/x.toml": text}) -> the main file's path."""

    def write(main: str | None, extra: Mapping[str, str] | None = None) -> Path:
        return write_files(tmp_path / "etc", main, extra or {})

    return write


@pytest.fixture
def load(write_config: WriteConfig) -> Callable[..., Config]:
    """load(text, env={...}, extra={...}) -> Config; hostname is "testhost"."""

    def load_text(
        main: str | None,
        env: Mapping[str, str] | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> Config:
        return load_config(write_config(main, extra), env=env or {}, hostname="testhost")

    return load_text


@pytest.fixture
def problems(load: Callable[..., Config]) -> Callable[..., list[tuple[str, str]]]:
    """problems(text, ...) -> [(key, message), ...] of the ConfigError load raises."""

    def collect(main: str | None, **kwargs: object) -> list[tuple[str, str]]:
        with pytest.raises(ConfigError) as error:
            load(main, **kwargs)
        return [(problem.key, problem.message) for problem in error.value.problems]

    return collect
