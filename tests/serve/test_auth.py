"""hamjax.serve.auth: the token from an environment variable or a file, and the constant-time check."""

import pytest

from hamjax.serve import auth


def test_the_token_comes_from_a_variable_or_a_file_stripped(tmp_path, monkeypatch):
    monkeypatch.setenv("HAMJAX_TEST_TOKEN", "  abc123\n")
    assert auth.read_token(env="HAMJAX_TEST_TOKEN") == "abc123"
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    assert auth.read_token(file=secret) == "from-a-file"
    assert auth.read_token() is None


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("both", "not both"),
        ("unset", "unset or empty"),
        ("empty-file", "the file is empty"),
        ("missing-file", "cannot read it"),
    ],
)
def test_a_token_that_cannot_be_read_is_refused_with_the_reason(kind, match, tmp_path, monkeypatch):
    monkeypatch.delenv("HAMJAX_TEST_UNSET", raising=False)
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    calls = {
        "both": lambda: auth.read_token(env="HAMJAX_TEST_UNSET", file=empty),
        "unset": lambda: auth.read_token(env="HAMJAX_TEST_UNSET"),
        "empty-file": lambda: auth.read_token(file=empty),
        "missing-file": lambda: auth.read_token(file=tmp_path / "nope"),
    }
    with pytest.raises(ValueError, match=match):
        calls[kind]()


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        ("Bearer s3cret", True),
        ("bearer s3cret", True),  # the scheme is case-insensitive
        ("Bearer  s3cret ", True),
        ("Bearer s3cre", False),
        ("Bearer s3cret2", False),
        ("Basic s3cret", False),
        ("s3cret", False),
        ("", False),
        (None, False),
    ],
)
def test_only_the_bearer_token_is_authorized(header, allowed):
    assert auth.authorized(header, "s3cret") is allowed
    assert auth.authorized(header, None) is True  # no token set: an open server
