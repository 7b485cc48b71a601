"""One inotify instance shared by several Watchers (watch.py), on one selector loop.

Linux allows each user 128 inotify instances (fs.inotify.max_user_instances, root
included): an instance per watched backup ran out at about 120 backups. The watcher
process (watching.py) serves every watched backup from one hub instead.

In one instance a directory has one watch descriptor, whoever watches it: two backups
watching overlapping trees share it. The hub keeps which Watchers hold each wd, hands each
one the events of its own wds (an overflow to all), and removes a wd from the kernel only
when no Watcher holds it any more. The first Watcher to join (often the only one) is the
hub's default: a wd it holds alone has no entry, the events of a wd without one go to it,
and it ignores those it does not hold; at 100,000 directories an entry for each would cost
~50 bytes a directory. Masks are only ever added (IN_MASK_ADD), so one Watcher's mask never
narrows another's; each Watcher ignores what it did not ask for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from henbackup.linux import IN_IGNORED, IN_MASK_ADD, INOTIFY_EVENT, Inotify

if TYPE_CHECKING:
    from henbackup.loop import Loop, Timer

_READ_SIZE = 1 << 18
_BATCH_DELAY = 0.02  # seconds between two reads (see InotifyHub._pause)
_OVERFLOW_WD = -1  # IN_Q_OVERFLOW comes with no watch descriptor

# One event: (wd, mask, name).
Event = tuple[int, int, bytes]


class Member(Protocol):
    def handle(self, events: list[Event]) -> None:
        """The events of the wds this member holds, in the kernel's order."""

    def holds(self, wd: int) -> bool:
        """Whether this member watches through `wd`."""


class InotifyHub:
    """The inotify instance of a loop's Watchers; open while one of them is."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self._inotify: Inotify | None = None
        self._members: list[Member] = []
        # wd → who watches through it: one member, or a tuple of several (a tuple for
        # each of 100,000 directories would cost 56 bytes each); no entry: the default's
        # alone, or no one's
        self._holders: dict[int, Member | tuple[Member, ...]] = {}
        self._default: Member | None = None
        self._resume: Timer | None = None  # while paused (see _pause)

    def fileno(self) -> int:
        return -1 if self._inotify is None else self._inotify.fd

    def join(self, member: Member) -> None:
        """Let `member` watch (opening the instance first); raises OSError (EMFILE: out of
        instances or descriptors)."""
        if self._inotify is None:
            self._inotify = Inotify()
            self.loop.add_reader(self._inotify.fd, self._readable)
        if member not in self._members:
            self._members.append(member)
            if self._default is None:  # it holds no wd yet: none lacks its entry
                self._default = member

    def leave(self, member: Member, wds: set[int]) -> None:
        """`member` stops watching: its `wds` are released; the last member closes the
        instance (which drops every watch at once)."""
        if member not in self._members:
            return
        self._members.remove(member)
        if self._members:
            for wd in wds:
                self.release(wd, member)
        else:
            self._close()
        if member is self._default:  # the others' wds all have their entries
            self._default = None

    def add_watch(self, path: bytes, mask: int, member: Member) -> int:
        """The wd watching `path` for `member` too; raises OSError (ENOSPC, ENOENT...)."""
        assert self._inotify is not None
        wd = self._inotify.add_watch(path, mask | IN_MASK_ADD)
        held = _members(self._holders.get(wd, ()))
        if member in held or (not held and member is self._default):
            return wd
        if not held and self._default is not None and self._default.holds(wd):
            held = (self._default,)  # the default's alone until now
        self._holders[wd] = (*held, member) if held else member
        return wd

    def release(self, wd: int, member: Member) -> None:
        """`member` no longer watches `wd`; removed from the kernel once no one does."""
        held = _members(self._holders.get(wd, ()))
        if not held and member is self._default:
            held = (member,)
        if member not in held:
            return
        rest = tuple(other for other in held if other is not member)
        if rest in ((), (self._default,)):
            self._holders.pop(wd, None)  # no one's, or the default's alone: no entry
        else:
            self._holders[wd] = rest if len(rest) > 1 else rest[0]
        if not rest and self._inotify is not None:
            self._inotify.rm_watch(wd)  # one the kernel already dropped is no error

    def _close(self) -> None:
        if self._inotify is not None:
            if self._resume is None:
                self.loop.remove_reader(self._inotify.fd)
            else:
                self._resume.cancel()
                self._resume = None
            self._inotify.close()
            self._inotify = None
        self._holders.clear()

    def _readable(self) -> None:
        inotify = self._inotify
        assert inotify is not None
        data = inotify.read(_READ_SIZE)
        if not data:
            return
        batches = self._dispatch(data)
        self._pause()
        for member, events in batches.items():
            member.handle(events)

    def _dispatch(self, data: bytes) -> dict[Member, list[Event]]:
        """Each member's events of one read."""
        batches: dict[Member, list[Event]] = {}
        routes: dict[int, list[list[Event]]] = {}  # wd → the batches its events go to
        offset, end = 0, len(data)
        while offset < end:
            wd, mask, _, length = INOTIFY_EVENT.unpack_from(data, offset)
            offset += 16
            name = data[offset : offset + length].rstrip(b"\0") if length else b""
            offset += length
            route = routes.get(wd)
            if route is None:  # a storm hits few directories: once per wd and read
                route = routes[wd] = [batches.setdefault(m, []) for m in self._heard_by(wd)]
            event = (wd, mask, name)
            for batch in route:
                batch.append(event)
            if mask & IN_IGNORED:  # the kernel dropped the wd, for every holder
                self._holders.pop(wd, None)
                del routes[wd]
        return batches

    def _heard_by(self, wd: int) -> tuple[Member, ...]:
        if wd == _OVERFLOW_WD:
            return tuple(self._members)
        held = self._holders.get(wd)
        if held is None:
            return () if self._default is None else (self._default,)
        return _members(held)

    def _pause(self) -> None:
        """Let events gather for _BATCH_DELAY before the next read: under a storm, one read
        per batch instead of one wake-up per event (the first event after quiet is still
        read at once). The kernel queue holds 16384 events: 20 ms would overflow only past
        800,000 events a second."""
        if self._inotify is None or self._resume is not None:
            return
        self.loop.remove_reader(self._inotify.fd)
        self._resume = self.loop.call_later(_BATCH_DELAY, self._unpause)

    def _unpause(self) -> None:
        self._resume = None
        if self._inotify is not None:
            self.loop.add_reader(self._inotify.fd, self._readable)


def _members(held: Member | tuple[Member, ...]) -> tuple[Member, ...]:
    return held if isinstance(held, tuple) else (held,)
