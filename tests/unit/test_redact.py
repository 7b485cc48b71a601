"""One redactor, one marker: known secrets, secret-looking query values and userinfo."""

from __future__ import annotations

from henbackup.redact import MARKER, Redactor


def test_password_ish_query_values_are_redacted_in_any_output() -> None:
    assert Redactor()("GET /x?a=1&access_token=zzz9 ok") == f"GET /x?a=1&access_token={MARKER} ok"


def test_longer_secrets_are_replaced_first() -> None:
    assert Redactor.of(["abc", "abcdef"])("abcdef abc") == f"{MARKER} {MARKER}"


def test_a_short_secret_is_hidden_as_a_word_never_inside_one() -> None:
    """restic's "unable to open config file" must stay readable (and recognisable: it is how
    a missing repository is told) when the password is "p"."""
    redact = Redactor.of(["p", "x1"])
    assert redact("Fatal: unable to open config file") == "Fatal: unable to open config file"
    assert redact("password p, token=x1; px1") == f"password {MARKER}, token={MARKER}; px1"
