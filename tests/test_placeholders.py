"""`{NAME}` / `{NAME.url}` templates (SPEC §2)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcherd.core.placeholders import expand, expand_bytes, names, references


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("plain", set()),
        ("{input_data}", {"input_data"}),
        ("--in={a}:{b}", {"a", "b"}),
        ("{a}{a}", {"a"}),
        ("{blob.url}", {"blob.url"}),
        ("{{a}}", set()),
        ("{{{a}}}", {"a"}),
        ("{1a} {a b} {a.path} {} { a }", set()),
        ("{_x9}", {"_x9"}),
        ("{", set()),
        ("}", set()),
    ],
)
def test_names(template: str, expected: set[str]) -> None:
    assert names(template) == expected


def test_references_keep_order_and_repeats() -> None:
    assert references("{b}{a}{b}{a.url}") == ["b", "a", "b", "a.url"]


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("--epochs={epochs}", "--epochs=10"),
        ("{{epochs}}", "{epochs}"),
        ("{{{epochs}}}", "{10}"),
        ("}}{{", "}{"),
        ("{not a name} {x.path} { }", "{not a name} {x.path} { }"),
        ("a}b{c", "a}b{c"),
        ("{f}", 'my file; rm -rf / {epochs} $(x) "q"'),
        ("{f.url}", "https://acct.blob.core.windows.net/c/a%20b.csv"),
    ],
)
def test_expand(template: str, expected: str) -> None:
    values = {"epochs": "10", "f": 'my file; rm -rf / {epochs} $(x) "q"'}
    urls = {"f": "https://acct.blob.core.windows.net/c/a%20b.csv"}
    assert expand(template, values, urls) == expected


def test_values_are_not_expanded_again() -> None:
    assert expand("{a}", {"a": "{b}", "b": "x"}) == "{b}"


def test_expand_unresolved_raises_key_error() -> None:
    with pytest.raises(KeyError) as exc:
        expand("x {missing} y", {})
    assert exc.value.args == ("missing",)
    with pytest.raises(KeyError) as exc:
        expand("{f.url}", {"f": "name"})
    assert exc.value.args == ("f.url",)


def test_expand_bytes_keeps_file_name_bytes() -> None:
    raw = b"caf\xe9 \xff.csv"  # not UTF-8
    out = expand_bytes("--in={input}", {"input": raw})
    assert out == b"--in=" + raw


def test_expand_bytes_encodes_text_and_str_values() -> None:
    assert expand_bytes("é{x}{{", {"x": "ü"}) == "éü{".encode()
    assert expand_bytes("{f.url}", {}, {"f": "https://h/c/x"}) == b"https://h/c/x"
    with pytest.raises(KeyError):
        expand_bytes("{x}", {})


@given(st.text())
def test_doubled_braces_are_literal(text: str) -> None:
    escaped = text.replace("{", "{{").replace("}", "}}")
    assert names(escaped) == set()
    assert expand(escaped, {}) == text


@given(st.text(), st.text(alphabet=st.characters(exclude_categories=["Cs"])))
def test_a_value_is_substituted_verbatim(prefix: str, value: str) -> None:
    escaped = prefix.replace("{", "{{").replace("}", "}}")
    assert expand(escaped + "{v}", {"v": value}) == prefix + value
    assert expand_bytes(escaped + "{v}", {"v": value.encode()}) == (prefix + value).encode(
        errors="surrogateescape"
    )
