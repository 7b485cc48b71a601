"""Before/after/failure hooks: HTTP requests and commands (henbackup.toml(5), hooks)."""

from henbackup.hooks.outcome import HookContext, HookOutcome, Verdict
from henbackup.hooks.run import RunResult, run_hook, run_hooks, run_with_hooks

__all__ = [
    "HookContext",
    "HookOutcome",
    "RunResult",
    "Verdict",
    "run_hook",
    "run_hooks",
    "run_with_hooks",
]
