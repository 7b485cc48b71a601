"""The watcher: one child of the master that watches every watched backup's paths.

Linux gives each user 128 inotify instances by default (fs.inotify.max_user_instances):
one per backup's worker ran out at about 120 watched backups. The watcher holds the
daemon's one instance (an InotifyHub) with a Watcher per watched backup on it, and tells
the master what each saw (WatchNews); the master forwards it to that backup's worker,
whose debounce, records and runs stay its own (triggers.py). A watch that met a limit is
tried again by its Watcher, as before. One instance is one kernel queue of events: when it
overflows, no one can tell whose events were lost, so every backup rescans and runs once.

The master forks it with the configuration (every watched backup at fork time) and, on a
reload, tells it what to Watch anew and Unwatch; its set-up (seconds for a very large tree)
never holds the master's loop up. If it dies, the master starts it again and, once it
watches again, tells every watched backup's worker that events were lost.
"""

from __future__ import annotations

import re
import signal

from henbackup.channel import Channel, Heartbeat, Ready, Unwatch, Watch, WatchNews
from henbackup.config.dirs import Dirs
from henbackup.config.model import Config
from henbackup.excludes import Excluder
from henbackup.loop import Loop
from henbackup.observe.events import EmitFunction, Emitter
from henbackup.worker.inotify_hub import InotifyHub
from henbackup.worker.watch import RETRY_AFTER, Watcher

HEARTBEAT_INTERVAL = 10.0


def watches(config: Config) -> dict[str, Watch]:
    """What the watcher watches for `config`: each watched backup's paths and excludes."""
    return {
        name: Watch(name, backup.paths, backup.excludes)
        for name, backup in config.backups.items()
        if backup.watch is not None
    }


class Watching:
    """Every watched backup's Watcher, on one inotify instance; news on `channel`. A watch
    that met a limit is tried again every `retry_after` seconds."""

    def __init__(
        self,
        loop: Loop,
        channel: Channel,
        retry_after: float = RETRY_AFTER,
        own: tuple[str, ...] = (),
    ) -> None:
        self.loop, self.channel, self.retry_after = loop, channel, retry_after
        self.own = tuple(_literal(path) for path in own)  # never a change (see watcher_main)
        self.hub = InotifyHub(loop)
        self.watchers: dict[str, Watcher] = {}

    def watch(self, spec: Watch) -> None:
        """Watch `spec.backup`'s paths (anew, if they were watched)."""
        self.unwatch(spec.backup)
        name, send = spec.backup, self.channel.send
        watcher = Watcher(
            spec.paths,
            Excluder((*spec.excludes, *self.own)),
            self.loop,
            on_change=lambda count: send(WatchNews(name, changes=count)),
            on_overflow=lambda: send(WatchNews(name, overflow=True)),
            on_watch_limit=lambda message: send(WatchNews(name, limit=message)),
            retry_after=self.retry_after,
            hub=self.hub,
        )
        self.watchers[name] = watcher
        watcher.start()

    def unwatch(self, name: str) -> None:
        watcher = self.watchers.pop(name, None)
        if watcher is not None:
            watcher.close()


def watcher_main(config: Config, channel: Channel, emit: EmitFunction | None = None) -> int:
    """The body of the forked watcher process; serves until SIGTERM or the master's end."""
    loop, emit = Loop(), emit or Emitter()
    # What henbackup writes itself (run records, restic's cache) is no change to back up: a
    # backup of /var would otherwise run again after each run, for ever.
    dirs = Dirs.from_environment()
    watching = Watching(loop, channel, own=(str(dirs.state), str(dirs.cache), str(dirs.runtime)))
    loop.on_signal(signal.SIGTERM, loop.stop)
    loop.on_signal(signal.SIGINT, loop.stop)
    for spec in watches(config).values():
        watching.watch(spec)
        channel.send(Heartbeat())  # a very large tree takes a while: still alive
    channel.send(Ready())  # every watch is set up: what changes now is seen

    def malformed(error: Exception) -> None:
        message = f"the watcher skipped a message from the master: {error}"
        emit("daemon.error", message, source="watcher", error=str(error))

    def messages() -> None:
        received = channel.receive(malformed)
        if received is None:  # the master is gone
            loop.stop()
            return
        for message in received:
            if isinstance(message, Watch):
                watching.watch(message)
            elif isinstance(message, Unwatch):
                watching.unwatch(message.backup)

    def heartbeat() -> None:
        channel.send(Heartbeat())
        loop.call_later(HEARTBEAT_INTERVAL, heartbeat)

    loop.add_reader(channel.fileno(), messages)
    heartbeat()
    loop.run()
    return 0


def _literal(path: str) -> str:
    """An exclude pattern that matches `path` itself, whatever characters it holds."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", path)
