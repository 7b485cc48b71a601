"""What may reach a hook's events: bounded output, without the secrets it was given."""

from __future__ import annotations

import os
from types import SimpleNamespace

from henbackup.config.load import load_config
from henbackup.config.model import CommandHook, HttpHook
from henbackup.hooks.command import SAFE_PATH, _Watch, environment
from henbackup.hooks.outcome import HookContext
from henbackup.hooks.output import OUTPUT_LIMIT, TRUNCATED, Tail, clean_output, hook_secrets
from henbackup.hooks.run import describe
from henbackup.redact import MARKER as REDACTED
from henbackup.redact import Redactor, redact_url


def test_env_values_are_secrets_unless_short_and_harmlessly_named():
    hook = CommandHook(
        ("x",), env=(("PGPASSWORD", "hunter2"), ("DEBUG", "1"), ("TOKEN", "ab"), ("DB", "grafana"))
    )
    redact = hook_secrets(hook)
    assert redact("pw=hunter2 debug=1 token ab db grafana") == (
        f"pw={REDACTED} debug=1 token {REDACTED} db {REDACTED}"
    )


def test_authorization_like_headers_and_their_credentials_are_secrets():
    hook = HttpHook(
        "https://h/x",
        headers=(
            ("Authorization", "Bearer s3cr3t-token"),
            ("X-Api-Key", "k3y!"),
            ("Accept", "*/*"),
        ),
    )
    redact = hook_secrets(hook)
    text = redact("got Bearer s3cr3t-token, then s3cr3t-token alone, k3y! and */*")
    assert "s3cr3t" not in text and "k3y!" not in text
    assert "*/*" in text


def test_url_passwords_and_password_ish_query_values_are_redacted():
    url = "https://user:pa55@example.org/dump?db=main&password=x1&api_key=k2&sig=s3#frag"
    shown = redact_url(url)
    assert "pa55" not in shown and "x1" not in shown and "k2" not in shown and "s3" not in shown
    assert shown.startswith(f"https://user:{REDACTED}@example.org/dump?db=main&password=")
    redact = hook_secrets(HttpHook(url))
    assert redact("echo: user:pa55 x1") == f"echo: user:{REDACTED} {REDACTED}"


def test_a_token_given_as_the_urls_user_is_redacted_with_its_basic_credentials():
    """https://TOKEN@host/: no password, the user name is the secret; a server that echoes
    the request (or its Authorization header) showed it raw or in base64."""
    hook = HttpHook("https://tok3n-5ecret@hooks.example/ping")
    redact = hook_secrets(hook)
    text = redact("user tok3n-5ecret, header Basic dG9rM24tNWVjcmV0Og==")
    assert "tok3n" not in text and "dG9rM24tNWVjcmV0Og==" not in text
    assert hook_secrets(HttpHook("https://me:pw@h/x"))("me and pw") == f"me and {REDACTED}"


def test_tail_keeps_the_end_and_notes_the_cut():
    tail = Tail(limit=10)
    tail.add(b"0123456789")
    assert not tail.truncated
    tail.add(b"abc")
    assert bytes(tail.data) == b"3456789abc" and tail.truncated


def test_truncated_output_starts_at_a_line_and_is_marked():
    text = clean_output(b"tail of a line\nlast line\n", True, Redactor())
    assert text == TRUNCATED + "last line"


def test_a_secret_cut_by_truncation_leaves_no_fragment():
    redact = Redactor.of(["hunter2secret"])
    text = clean_output(b"2secret and the rest without a line break", True, redact)
    assert text == TRUNCATED + " and the rest without a line break"


def test_output_that_fits_is_only_decoded_and_redacted():
    assert clean_output("héllo pw\n".encode(), False, Redactor.of(["pw"])) == f"héllo {REDACTED}"
    assert clean_output(b"\xff", False, Redactor()) == "\ufffd"
    assert OUTPUT_LIMIT == 4096


def test_command_environment_is_minimal_then_context_then_the_hooks_own():
    os_secret = "AWS_SECRET_ACCESS_KEY"
    hook = CommandHook(("x",), env=(("PATH", "/opt/bin"), ("A", "1")))
    context = HookContext("grafana", "failure", "j1", "schedule", "boom", host="rpi01")
    env = environment(hook, context.environment())
    assert env["PATH"] == "/opt/bin" and env["A"] == "1" and env["LANG"] == "C.UTF-8"
    assert env["HENBACKUP_BACKUP"] == "grafana" and env["HENBACKUP_HOOK"] == "failure"
    assert env["HENBACKUP_ERROR"] == "boom" and env["HENBACKUP_TRIGGER"] == "schedule"
    assert env["HENBACKUP_HOST"] == "rpi01"
    assert os_secret not in env
    assert set(env) == {"PATH", "LANG", "HOME", "A"} | {
        f"HENBACKUP_{n}" for n in ("BACKUP", "HOOK", "JOB", "TRIGGER", "ERROR", "HOST")
    }
    assert environment(CommandHook(("x",)), {})["PATH"] == SAFE_PATH


def test_what_the_environment_gave_a_hook_is_never_shown(tmp_path):
    config = tmp_path / "henbackup.toml"
    config.write_text(
        '[repositories.local]\nlocation = "/srv/r"\npassword = "x"\n'
        '[backups.db]\npaths = ["/srv/db"]\nrepositories = ["local"]\n'
        "[[backups.db.hooks.after]]\n"
        'type = "http"\nurl = "https://hc-ping.com/${HC_UUID}/done"\n'
        "[[backups.db.hooks.before]]\n"
        'type = "command"\ncommand = ["/usr/bin/dump", "--key=${DUMP_KEY}"]\n'
    )
    env = {"HC_UUID": "5f3a9c1e-ping-uuid", "DUMP_KEY": "k3y-from-env"}
    hooks = load_config(config, env=env, hostname="h").backups["db"].hooks
    (ping,), (dump,) = hooks.after, hooks.before
    assert describe(ping) == f"POST https://hc-ping.com/{REDACTED}/done"
    assert describe(dump) == "command dump"  # its program only: arguments may hold secrets
    said = "pinged 5f3a9c1e-ping-uuid; used k3y-from-env"
    assert hook_secrets(ping)(said) == f"pinged {REDACTED}; used k3y-from-env"
    assert hook_secrets(dump)(said) == f"pinged 5f3a9c1e-ping-uuid; used {REDACTED}"


def test_what_an_exited_hook_left_is_read_up_to_max_drain_of_a_stream_that_never_runs_dry():
    """A child of the hook that writes on forever (`yes &`) once held the job: what the
    exited hook left was read until the pipe was empty. /dev/zero never is."""
    watch = SimpleNamespace(output=os.open("/dev/zero", os.O_RDONLY))
    tail = Tail()
    try:
        _Watch._drain(watch, tail)  # type: ignore[arg-type]
    finally:
        os.close(watch.output)
    assert tail.data == bytes(OUTPUT_LIMIT) and tail.truncated  # it returned, at MAX_DRAIN
