"""nice and ionice of the calling process (a program's child, before it execs).

Both are per thread in Linux and inherited by every thread and child created afterwards:
set before exec, they hold for the whole of restic.
"""

from __future__ import annotations

import os

from henbackup.linux import ioprio_set as set_ioprio
from henbackup.linux import ioprio_supported


def set_nice(value: int) -> None:
    """Raises OSError (EACCES: a negative value needs CAP_SYS_NICE)."""
    os.setpriority(os.PRIO_PROCESS, 0, value)


__all__ = ["ioprio_supported", "set_ioprio", "set_nice"]
