"""The journald fallback, against a real stale journal socket in a private mount namespace."""

import json
import subprocess
import sys
import textwrap

# A socket file nobody listens on: exactly what a crashed journald leaves behind.
SCRIPT = textwrap.dedent(
    """
    import os, socket, sys
    os.makedirs("/run/systemd/journal")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind("/run/systemd/journal/socket")
    stale.close()
    from henbackup.observe.events import Emitter
    Emitter(sys.stdout, use_journal=True)("daemon.started", "hello", pid=1)
    """
)


def test_a_stale_journal_socket_falls_back_to_json_lines():
    shell = f'mount -t tmpfs tmpfs /run && exec "{sys.executable}" -c "$0"'
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", shell, SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["HENBACKUP_EVENT"] == "daemon.started"
    assert record["HENBACKUP_PID"] == "1"
