"""Masking secrets (SPEC §8)."""

from __future__ import annotations

from watcherd.core.redact import (
    connection_string_secrets,
    make_redactor,
    redact,
    redact_obj,
    redact_url,
    url_secrets,
)


def test_redact_masks_each_occurrence() -> None:
    assert redact("token abcd1234 and abcd1234", ["abcd1234"]) == "token *** and ***"


def test_redact_longest_first_and_regex_characters() -> None:
    secrets = ["sig=a+b", "sig=a+b&sv=1(x)"]
    assert redact("q=sig=a+b&sv=1(x)", secrets) == "q=***"


def test_redact_ignores_empty_and_tiny_secrets() -> None:
    assert redact("a 1 b", ["", "1"]) == "a 1 b"
    assert make_redactor([])("unchanged") == "unchanged"


def test_redact_url() -> None:
    assert redact_url("https://u:p@h.example/x?sig=1&sv=2") == "https://***@h.example/x?***"
    assert redact_url("https://h.example:8443/x") == "https://h.example:8443/x"
    assert redact_url("http://user@h/") == "http://***@h/"
    assert redact_url("http://[::1/") == "http://[::1/"  # unparsable: unchanged


def test_url_secrets() -> None:
    assert url_secrets("https://u:pw@h/x?sig=abc") == ["u:pw", "pw", "sig=abc", "abc"]
    assert url_secrets("https://h/x?sig=abc", values=False) == ["sig=abc"]
    assert url_secrets("https://h/x") == []


def test_connection_string_secrets() -> None:
    conn = "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=KEY123==;EndpointSuffix=x"
    assert connection_string_secrets(conn) == [conn, "KEY123=="]
    sas = "BlobEndpoint=https://a;SharedAccessSignature=sv=1&sig=zz"
    assert connection_string_secrets(sas) == [sas, "sv=1&sig=zz"]


def test_redact_obj_walks_json() -> None:
    value = {"headers": {"Authorization": "Bearer s3cret"}, "list": ["s3cret", 5], "n": None}
    assert redact_obj(value, ["s3cret"]) == {
        "headers": {"Authorization": "Bearer ***"},
        "list": ["***", 5],
        "n": None,
    }
