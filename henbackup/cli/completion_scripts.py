"""The shell completion scripts, generated from the argparse parsers by shtab at build time.

`python3 -m henbackup.cli.completion_scripts DIR` writes DIR/bash/* and DIR/zsh/*: verbs and
options come from the parsers; an argument is completed by what its metavar names (BACKUP,
REPOSITORY, JOB_ID, SNAPSHOT, FILE, DIR), through `henbackupctl --complete KIND`
(completion.py) for names.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from henbackup.cli.completion import BY_METAVAR

BASH = r"""
_henbackup_option() {  # the value of option $1 on the line so far
  local i
  for ((i = 1; i < COMP_CWORD; i++)); do
    if [[ ${COMP_WORDS[i]} == "$1" ]]; then
      [[ ${COMP_WORDS[i+1]} == = ]] && echo "${COMP_WORDS[i+2]}" || echo "${COMP_WORDS[i+1]}"
    fi
  done
}
_henbackup_names() {  # $1: kind, $2: the word being completed
  local -a options=()
  local socket config
  socket=$(_henbackup_option --socket)
  config=$(_henbackup_option --config)
  [[ -n $socket ]] && options+=(--socket "$socket")
  [[ -n $config ]] && options+=(--config "$config")
  [[ $1 == snapshots ]] && options+=(--repository "${COMP_WORDS[COMP_CWORD-1]}")
  local IFS=$'\n'
  compgen -W "$(henbackupctl --complete "$1" "${options[@]}" 2>/dev/null)" -- "$2"
}
_henbackup_backups() { _henbackup_names backups "$1"; }
_henbackup_repositories() { _henbackup_names repositories "$1"; }
_henbackup_jobs() { _henbackup_names jobs "$1"; }
_henbackup_snapshots() { _henbackup_names snapshots "$1"; }
"""

ZSH = r"""
_henbackup_names() {  # $1: kind
  local -a found options
  local i
  for ((i = 2; i < CURRENT; i++)); do
    case ${words[i]} in
      --socket|--config) options+=(${words[i]} ${words[i+1]}) ;;
    esac
  done
  [[ $1 == snapshots ]] && options+=(--repository ${words[CURRENT-1]})
  found=(${(f)"$(henbackupctl --complete $1 $options 2>/dev/null)"})
  compadd -a found
}
_henbackup_backups() { _henbackup_names backups; }
_henbackup_repositories() { _henbackup_names repositories; }
_henbackup_jobs() { _henbackup_names jobs; }
_henbackup_snapshots() { _henbackup_names snapshots; }
"""


# shtab 1.5.5 (Debian 12's) offers only the first of a positional's choices (the first
# verb): all of them, one a line, as its compgen reads them (later shtabs have no such line).
CHOICES_FIX = (
    'current_action_choices="${!current_action_choices_var}"',
    'current_action_choices_var="${current_action}_choices[@]"\n'
    "  current_action_choices=$(printf '%s\\n' \"${!current_action_choices_var}\")",
)


def _mark(parser: argparse.ArgumentParser) -> None:
    """Tell shtab how each argument completes, by its metavar, in every subcommand (and
    expand `%(default)s` in the help, which zsh shows and shtab 1.5.5 leaves as it is)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                _mark(subparser)
            continue
        if action.help and "%(" in action.help:
            action.help = parser._get_formatter()._expand_help(action)
        kind = BY_METAVAR.get(action.metavar or action.dest.upper())
        if kind in ("file", "directory"):
            action.complete = kind  # type: ignore[attr-defined]
        elif kind is not None:
            function = f"_henbackup_{kind}"
            action.complete = {"bash": function, "zsh": function}  # type: ignore[attr-defined]


def scripts() -> dict[str, str]:
    """Each script by its installed path under bash/ and zsh/."""
    import shtab  # a build dependency only: the scripts are static files

    from henbackup.cli import ctl, daemon

    written = {}
    for module in (daemon, ctl):
        parser = module.get_parser()
        _mark(parser)
        name = parser.prog
        bash = shtab.complete(parser, "bash", preamble={"bash": BASH})
        written[f"bash/{name}"] = bash.replace(*CHOICES_FIX)
        written[f"zsh/_{name}"] = shtab.complete(parser, "zsh", preamble={"zsh": ZSH})
    return written


def main() -> None:
    out = Path(sys.argv[1])
    for name, text in scripts().items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)


if __name__ == "__main__":
    main()
