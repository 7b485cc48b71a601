"""henbackupctl against something on the socket that does not answer as the daemon does
(another program, a broken daemon): one line saying so and an exit code, never a
traceback. The server is a thread of the test, answering one connection."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from henbackup.cli import ctl


def serve_once(path: Path, answer: bytes) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def run() -> None:
        with server, server.accept()[0] as conn:
            conn.recv(65536)
            conn.sendall(answer)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("answer", "command", "code", "said"),
    [
        (b"garbage\n", ["status"], 3, "sent a malformed answer"),
        (b"\xff\n", ["status"], 3, "sent a malformed answer"),
        (b"[" * 100_000 + b"\n", ["status"], 3, "sent a malformed answer"),
        (b"[1]\n", ["status"], 3, "sent a malformed answer"),
        (b'{"ok": true}', ["status"], 3, "sent a malformed answer"),  # cut before its end
        (b'{"ok": true}\n', ["status"], 1, "is not of the shape expected"),
        (b'{"ok": true, "backups": 5}\n', ["status"], 1, "is not of the shape expected"),
        (b'{"ok": false, "code": [1], "error": "no"}\n', ["status"], 1, "henbackupctl: no"),
        (b'{"event": "x"}\n{"ok": true}\n', ["backup", "b"], 0, ""),
    ],
)
def test_an_answer_of_the_wrong_shape_is_one_line_and_an_exit_code(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    answer: bytes,
    command: list[str],
    code: int,
    said: str,
) -> None:
    path = tmp_path / "control.sock"
    thread = serve_once(path, answer)
    assert ctl.main(["--socket", str(path), *command]) == code
    thread.join(10)
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err
    assert err.count("\n") == (1 if said else 0)


@pytest.mark.parametrize(
    ("answer", "code", "shown"),
    [
        (b'{"ok":true,"backups":[],"note":"caf\\u00e9"}\n', 0, None),
        (b'{"ok": false, "code": "permission", "error": "no"}\n', 4, None),
        # not as our daemon writes: in ASCII, on one line, whatever came
        ('\ufeff{"ok": true,\r "x": "\x9b2J"}\n'.encode(), 0, '{"ok": true, "x": "\\u009b2J"}\n'),
    ],
)
def test_json_for_a_program_is_the_daemons_answer_as_it_came(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    answer: bytes,
    code: int,
    shown: str | None,
) -> None:
    path = tmp_path / "control.sock"
    thread = serve_once(path, answer)
    assert ctl.main(["--socket", str(path), "--json", "status"]) == code
    thread.join(10)
    assert capsys.readouterr().out == (shown or answer.decode())


def serve_silently(path: Path, lines: list[tuple[float, bytes]]) -> threading.Thread:
    """Accept one connection, read the request, then write each line after its pause."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    done = threading.Event()

    def run() -> None:
        with server, server.accept()[0] as conn:
            conn.recv(65536)
            for pause, line in lines:
                done.wait(pause)
                conn.sendall(line)
            done.wait(10)  # silent, the connection open, until the test ends

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.done = done  # type: ignore[attr-defined]
    return thread


@pytest.mark.parametrize("command", [["status"], ["backup", "b"], ["backup", "b", "--no-wait"]])
def test_a_daemon_that_never_answers_is_unreachable_after_the_timeout(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
) -> None:
    # A waiting backup once stopped timing out as it sent its request: it hung for ever.
    monkeypatch.setattr(ctl, "TIMEOUT", 0.3)
    path = tmp_path / "control.sock"
    thread = serve_silently(path, [])
    assert ctl.main(["--socket", str(path), *command]) == ctl.EXIT_UNREACHABLE
    thread.done.set()  # type: ignore[attr-defined]
    err = capsys.readouterr().err
    said = f"cannot reach the daemon at {path}: timed out (is henbackup.service running?)"
    assert err == f"henbackupctl: {said}\n"


def test_once_the_daemon_answered_a_waiting_backup_waits_as_long_as_its_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ctl, "TIMEOUT", 0.3)
    path = tmp_path / "control.sock"
    waiting = b'{"waiting": "r00000001"}\n'  # what the daemon says first, at once
    thread = serve_silently(path, [(0, waiting), (0.6, b'{"ok": true}\n')])  # 2 timeouts later
    assert ctl.main(["--socket", str(path), "backup", "b"]) == ctl.EXIT_OK
    thread.done.set()  # type: ignore[attr-defined]
