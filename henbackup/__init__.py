"""henbackup: a systemd-native daemon that supervises restic backups."""

__version__ = "0.1.0"
