"""`henbackup`: the daemon and its offline tools (henbackup(8))."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from henbackup import __version__
from henbackup.cli import Parser, exit_now, reader_left
from henbackup.config.dirs import Dirs, config_path
from henbackup.errors import ConfigError, Problem
from henbackup.observe.events import SINK_VARIABLE, SINKS, wanted_sink

if TYPE_CHECKING:
    from henbackup.config.model import Config

# Each command imports what it needs when it runs, so that `henbackup backup` (and
# `--version`, and completion) does not pay for the daemon's modules at start; `run` still
# imports everything before it forks its workers, which then share those pages.

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# `run` with an invalid configuration: systemd's "not configured" (status=6/NOTCONFIGURED),
# which the unit does not restart on (RestartPreventExitStatus=): it would only fail again.
EXIT_NOT_CONFIGURED = 6


def get_parser() -> argparse.ArgumentParser:
    """The command line (also read by argparse-manpage to write henbackup(8))."""
    parser = Parser(
        prog="henbackup",
        description="henbackup supervises restic so that backups happen by themselves: it "
        "reads a TOML configuration, runs each backup to each of its repositories, and reports "
        "every step as a structured event in the journal (outside systemd on standard error: "
        "one readable line per event on a terminal, JSON lines on a pipe or a file).",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="main configuration file (default: $HENBACKUP_CONFIG or "
        "/etc/henbackup/henbackup.toml, plus conf.d/*.toml beside it)",
    )
    parser.add_argument(
        "--events",
        choices=SINKS,
        help="where events go, whatever standard error is: json (one JSON object per line on "
        "stderr), text (one readable line per event on stderr) or journal (default: the "
        "journal under systemd, text on a terminal, json otherwise; or $HENBACKUP_EVENTS)",
    )
    parser.add_argument("--version", action="version", version=f"henbackup {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "run",
        help="run the daemon in the foreground (what henbackup.service starts)",
        description="Run the master in the foreground: one worker per backup and per "
        "repository with check or prune schedules. SIGHUP reloads the configuration: "
        "only the workers whose backup, repositories or [daemon] settings their jobs read "
        "changed are restarted (interrupting their running job); the others go on. "
        "SIGTERM stops cleanly. Readiness and status go to systemd through sd_notify.",
    )
    commands.add_parser(
        "check-config",
        help="validate the configuration and print the resolved plan",
        description="Validate the configuration and print the resolved plan. Exit 0 when "
        "valid, 1 when not, with every problem as 'FILE: key.path: what is wrong'.",
    )
    commands.add_parser(
        "schema",
        help="print the JSON Schema of henbackup.toml, for editors",
        description="Print a JSON Schema (draft 7) of henbackup.toml and of each "
        "conf.d/*.toml, so that an editor can complete and check them (taplo, Even Better "
        "TOML). It knows every key and the shape of its value; check-config is the full check.",
    )
    backup = commands.add_parser(
        "backup",
        help="run one backup now, in the foreground, to each of its repositories",
        description="Run one backup now to each of its repositories, without the daemon; "
        "events go to the journal or to stderr. Exit 0 when every repository succeeded.",
    )
    backup.add_argument("name", metavar="BACKUP", help="a backup defined in the configuration")
    return parser


def _load(args: argparse.Namespace) -> Config:
    from henbackup.config.load import load_config

    return load_config(config_path(args.config))


def run(args: argparse.Namespace) -> int:
    from henbackup.config.load import load_config
    from henbackup.config.secrets import exposures
    from henbackup.engine.engines import engine_class
    from henbackup.jobs.entry import one_off_job
    from henbackup.master.supervisor import Master
    from henbackup.observe.events import Emitter
    from henbackup.observe.status import StatusModel
    from henbackup.scheduler.queue import Scheduler
    from henbackup.worker.main import worker_main

    path = config_path(args.config)
    dirs, emit = Dirs.from_environment(), Emitter()
    try:
        config = load_config(path)
    except ConfigError as error:  # said as a reload's rejection is: one query finds both
        message = f"configuration invalid, henbackup did not start: {error}"
        fields = {"error": str(error), "problems": len(error.problems), "config": str(path)}
        emit("config.invalid", message, **fields)
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return EXIT_NOT_CONFIGURED
    for kind in {repository.engine for repository in config.repositories.values()}:
        engine_class(kind)  # imported before the fork, not again by every job process
    for exposure in exposures(config):
        emit(
            "secret.exposed",
            str(exposure),
            config=exposure.file,
            key=exposure.key or None,
            error=exposure.message,
        )
    master = Master(
        path,
        config,
        emit,
        worker_main,
        socket_path=dirs.runtime / "control.sock",
        scheduler=Scheduler(dirs.scheduler),
        one_off_body=one_off_job,
        state_dir=dirs.state,
        model=StatusModel(dirs.state / "status.json"),
    )
    return master.run()


def check_config(args: argparse.Namespace) -> int:
    """The plan on stdout; on stderr, what only the service can check and exposed secrets."""
    from datetime import datetime

    from henbackup.config.load import load_config
    from henbackup.config.plan import describe_plan
    from henbackup.config.provider_keys import provider_report
    from henbackup.config.secrets import exposures
    from henbackup.limits.cgroups import detect
    from henbackup.limits.place import host_report

    deferred: list[Problem] = []
    config = load_config(config_path(args.config), deferred=deferred)
    for problem in deferred:
        print(Problem(problem.file, problem.key, f"note: {problem.message}"), file=sys.stderr)
    providers = provider_report(config)
    problems = [*providers.problems, *_engine_problems(config)]
    if problems:
        raise ConfigError(problems)
    for line in [*providers.notes, *exposures(config), *providers.warnings, *_private(config)]:
        print(line, file=sys.stderr)
    print(describe_plan(config, datetime.now().astimezone()))
    report = host_report(config, detect())
    if report:
        print(f"\n{report}")
    return EXIT_OK


PRIVATE_TMP = ("/tmp", "/var/tmp")  # the unit's PrivateTmp= gives the daemon its own


def _private(config: Config) -> list[Problem]:
    """Warnings for the backup paths that the service sees empty, not as the host has them."""
    return [
        Problem(
            backup.file,
            f"{backup.key}.paths[{index}]",
            f"warning: {path} is in the service's own {private} (PrivateTmp= of its unit), "
            "empty, not the host's: move the data, or set PrivateTmp=no in a drop-in "
            "(systemctl edit henbackup)",
        )
        for backup in config.backups.values()
        for index, path in enumerate(backup.paths)
        for private in PRIVATE_TMP
        if path == private or path.startswith(private + "/")
    ]


def _engine_problems(config: Config) -> list[Problem]:
    """The engines' binaries, where a repository uses them: restic's that cannot run or
    does not say it is restic, at daemon.restic; borg's that cannot run or is not 1.2 to
    1.4, at the first borg repository's engine key."""
    return [*_restic_problems(config), *_borg_problems(config)]


def _restic_problems(config: Config) -> list[Problem]:
    if all(r.engine != "restic" for r in config.repositories.values()):
        return []
    from henbackup.engine.restic import ResticEngine
    from henbackup.errors import EngineError

    binary = config.daemon.restic
    try:
        if ResticEngine(binary).features.version != (0, 0, 0):
            return []
        problem = f"{binary} does not say it is restic (restic version)"
    except EngineError as error:
        problem = str(error)
    message = f"{problem}: install restic (apt install restic), or set the path of its binary"
    return [Problem(str(config.files[0]), "daemon.restic", message)]


def _borg_problems(config: Config) -> list[Problem]:
    borgs = [r for r in config.repositories.values() if r.engine == "borg"]
    if not borgs:
        return []
    from henbackup.engine.borg import binary_problem

    problem = binary_problem(config.daemon.borg)
    return [] if problem is None else [Problem(borgs[0].file, f"{borgs[0].key}.engine", problem)]


def schema(args: argparse.Namespace) -> int:
    import json

    from henbackup.config.schema import json_schema

    print(json.dumps(json_schema(), indent=2, ensure_ascii=False))
    return EXIT_OK


def backup(args: argparse.Namespace) -> int:
    from henbackup.engine.engines import repository_engines
    from henbackup.jobs.job import telling
    from henbackup.jobs.pipeline import run_backup_pipeline
    from henbackup.limits.place import placed
    from henbackup.scheduler.queue import Scheduler

    config = _load(args)
    if args.name not in config.backups:
        known = ", ".join(sorted(config.backups)) or "none"
        print(f"henbackup: no backup named {args.name!r} (defined: {known})", file=sys.stderr)
        return EXIT_USAGE
    cache = Dirs.from_environment().cache
    engine = repository_engines(
        config.daemon, cache_dir=cache, stall_timeout=config.daemon.stall_timeout
    )
    scheduler = Scheduler(Dirs.from_environment().scheduler)
    with placed(args.name, config.backups[args.name].resources, telling(None)) as placement:
        result = run_backup_pipeline(config, args.name, engine, placement.emit, scheduler=scheduler)
    if result.status == "skipped":
        print(f"{args.name}: skipped by a before hook")
    for outcome in result.outcomes:
        if not outcome.ok:
            said = f"FAILED: {placement.explain(outcome.error)}"
        else:
            said = f"snapshot {outcome.snapshot_id or '(nothing changed)'}"
        print(f"{args.name} → {outcome.repository}: {said}")
    return EXIT_FAILED if result.status == "failed" else EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": run,
    "check-config": check_config,
    "schema": schema,
    "backup": backup,
}


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    if args.events:  # through the environment, so that forked workers and jobs follow it
        os.environ[SINK_VARIABLE] = args.events
    try:
        wanted_sink()
    except ValueError as error:
        print(f"henbackup: {error} (or use --events)", file=sys.stderr)
        return EXIT_USAGE
    try:
        return COMMANDS[args.command](args)
    except ConfigError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `henbackup schema | head`: the output was cut short
        reader_left(sys.stdout)
        return EXIT_FAILED


def command() -> NoReturn:
    """The `henbackup` program (its console script): main(), then exit at once."""
    exit_now(main())


if __name__ == "__main__":
    command()
