"""dispatch.urls.expand_url: a placeholder value stays inside the URL part it stands in."""

from __future__ import annotations

import pytest

from watcherd.dispatch.urls import UrlError, encode_path, expand_url


@pytest.mark.parametrize(
    ("template", "values", "expected"),
    [
        ("https://h/x", {}, "https://h/x"),
        ("https://h/x?b={{x}}", {}, "https://h/x?b={x}"),
        ("https://h/{p}/z", {"p": "a/b c"}, "https://h/a%2Fb%20c/z"),
        ("https://h/x?f={p}&k=1", {"p": "x&admin=1#y"}, "https://h/x?f=x%26admin%3D1%23y&k=1"),
        ("https://h/x?f={p}", {"p": "a+b=c"}, "https://h/x?f=a%2Bb%3Dc"),
        ("https://h/x#{p}", {"p": "a b"}, "https://h/x#a%20b"),
        (
            "https://{r}.hooks.example:8443/x",
            {"r": "west-eu1"},
            "https://west-eu1.hooks.example:8443/x",
        ),
        ("https://h/x?v={p}", {"p": "é\udcff"}, "https://h/x?v=%C3%A9%FF"),
        ("https://h/{p}.csv", {"p": "."}, "https://h/..csv"),
    ],
)
def test_values_are_encoded_for_their_part(
    template: str, values: dict[str, str], expected: str
) -> None:
    assert expand_url(template, values) == expected


def test_url_placeholders_use_the_url_table() -> None:
    url = expand_url("https://h/hook?blob={f.url}", {}, {"f": "https://a.blob/c/x y?sv=1"})
    assert url == "https://h/hook?blob=https%3A%2F%2Fa.blob%2Fc%2Fx%20y%3Fsv%3D1"


@pytest.mark.parametrize(
    ("template", "values", "part"),
    [
        ("{s}://h/x", {"s": "https"}, "scheme"),
        ("https://{u}@h/x", {"u": "me"}, "credentials"),
        ("https://h:{port}/x", {"port": "8443"}, "port"),
        ("https://{r}.h/x", {"r": "a.b"}, "host"),
        ("https://{r}.h/x", {"r": "-a"}, "host"),
        ("https://{r}.h/x", {"r": ""}, "host"),
        ("https://{r}.h/x", {"r": "evil.com/x#"}, "host"),
        ("https://[{r}::1]/x", {"r": "fe80"}, "host"),
        ("https://h/a/{p}/b", {"p": ".."}, "path"),
        ("https://h/a/{p}", {"p": "."}, "path"),
    ],
)
def test_a_value_cannot_change_the_structure(
    template: str, values: dict[str, str], part: str
) -> None:
    with pytest.raises(UrlError) as info:
        expand_url(template, values)
    assert info.value.part == part
    name = next(iter(values))
    assert f"{{{name}}}" in str(info.value)
    assert all(v not in str(info.value) for v in values.values() if len(v) > 2)


def test_a_missing_value_is_a_key_error() -> None:
    with pytest.raises(KeyError) as info:
        expand_url("https://h/{a}/{b.url}", {"a": "1"})
    assert info.value.args == ("b.url",)


def test_encode_path_keeps_slashes() -> None:
    assert encode_path("in/daily report #1 ü.csv") == "in/daily%20report%20%231%20%C3%BC.csv"
