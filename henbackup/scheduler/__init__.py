"""The host-wide job queue shared by every henbackup process (henbackup.toml(5), PRIORITIES)."""

from henbackup.scheduler.queue import Grant, Scheduler, Waiter
from henbackup.scheduler.ticket import Mode, Ticket, mode_for

__all__ = ["Grant", "Mode", "Scheduler", "Ticket", "Waiter", "mode_for"]
