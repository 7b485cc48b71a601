"""Who may do what on the control socket (henbackupctl(1), "Who may do what").

Two kinds of callers. Members of group `henbackup` watch and operate: they see the state of
everything and start or cancel the work the configuration already describes. Reading file
contents out of a repository, writing on the host and destructive maintenance are root's
alone (or the daemon's own user's, when it does not run as root: it can do all that itself).

Decided from the credentials the kernel took when the client connected (SO_PEERCRED, and
SO_PEERGROUPS for the supplementary groups): never from anything a request says.
"""

from __future__ import annotations

import errno
import functools
import grp
import os
import socket
import struct
from dataclasses import dataclass
from enum import IntEnum

from henbackup.protocol import DENIED, GROUP

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13+; not named by Python


class Privilege(IntEnum):
    NONE = 0
    OPERATE = 1  # group henbackup: watch and operate
    OWN = 2  # root: read contents, write on the host, destroy


# Every command the daemon answers, and who may ask for it. `logs` reads the journal
# (journal rights) and never reaches the daemon.
REQUIRED: dict[str, Privilege] = {
    "status": Privilege.OPERATE,
    "queue": Privilege.OPERATE,
    "list-snapshots": Privilege.OPERATE,
    "backup": Privilege.OPERATE,
    "check": Privilege.OPERATE,
    "cancel": Privilege.OPERATE,
    "restore-snapshot": Privilege.OWN,  # reads a repository's files, writes on the host
    "prune": Privilege.OWN,  # destroys snapshots
}
OPERATOR_COMMANDS = ", ".join(name for name, need in REQUIRED.items() if need is Privilege.OPERATE)
CANCEL_RESTORE_DENIED = (
    f"permission denied: only root may cancel a restore (group {GROUP} may cancel backups,"
    " checks and prunes)"
)


@dataclass(frozen=True)
class Peer:
    """The client process at the other end of a connection, as the kernel saw it."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int]

    @property
    def privilege(self) -> Privilege:
        if self.uid in (0, os.geteuid()):
            return Privilege.OWN
        gid = operators_gid()
        if gid is None:  # no such group: root only
            return Privilege.NONE
        return Privilege.OPERATE if gid == self.gid or gid in self.groups else Privilege.NONE


@functools.cache
def operators_gid() -> int | None:
    """Group henbackup's gid (None: no such group), looked up once: a name service (LDAP,
    sssd) may answer slowly, and the master's loop must not wait on it for every client.
    A reload looks it up again (`operators_gid.cache_clear()`)."""
    try:
        return grp.getgrnam(GROUP).gr_gid
    except KeyError:
        return None


def peer_of(conn: socket.socket) -> Peer:
    """The credentials of the process that connected `conn`."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return Peer(pid, uid, gid, _peer_groups(conn))


def _peer_groups(conn: socket.socket) -> frozenset[int]:
    """The supplementary groups the client had when it connected (none if unknown)."""
    for count in (64, 65536):  # NGROUPS_MAX is 65536
        try:
            raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * count)
        except OSError as error:
            if error.errno == errno.ERANGE:
                continue
            return frozenset()
        return frozenset(struct.unpack(f"{len(raw) // 4}I", raw))
    return frozenset()


def refusal(command: str, peer: Peer) -> str | None:
    """Why `peer` may not run `command` (one line saying who may), or None if it may."""
    need = REQUIRED.get(command, Privilege.OWN)
    have = peer.privilege
    if have >= need:
        return None
    if have is Privilege.NONE:
        return DENIED
    return f"permission denied: only root may {command} (group {GROUP} may {OPERATOR_COMMANDS})"
