"""The host-wide job queue shared by every henbackup process (SPEC "Jobs, priorities...")."""

from henbackup.scheduler.queue import Grant, Scheduler, Waiter
from henbackup.scheduler.ticket import Mode, Ticket, mode_for

__all__ = ["Grant", "Mode", "Scheduler", "Ticket", "Waiter", "mode_for"]
