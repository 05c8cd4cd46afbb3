"""`core.jsontext.dumps` writes exactly what `json.dumps` writes, errors included; so do
`mapping_json` and `mapping_json_once` for mappings of any kind."""

from __future__ import annotations

import json
from collections import OrderedDict
from types import MappingProxyType
from typing import Any

import pytest

from watcherd.core.jsontext import dumps, mapping_json, mapping_json_once

VALUES: list[Any] = [
    {},
    {"kind": "time", "slot": "2026-12-01T02:00:00Z"},
    {"file": 'new\nline é \u2028 "quoted" \\', "n": 3, "x": 2.5, "ok": True, "none": None},
    {1: "int key", 2.5: "float key", None: "null key", False: "bool key"},
    [1, [2, [3, {"deep": ["ü", -0.0, 1e300]}]]],
    (1, "tuple"),
    "a top-level string \x00 \x7f",
    42,
    float("nan"),
    float("-inf"),
    [],
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_dumps_writes_what_json_dumps_writes(value: Any) -> None:
    assert dumps(value) == json.dumps(value)


@pytest.mark.parametrize("value", [{"x": object()}, [b"bytes"], {("tuple", "key"): 1}])
def test_what_json_refuses_it_refuses_the_same_way(value: Any) -> None:
    with pytest.raises(TypeError) as want:
        json.dumps(value)
    with pytest.raises(TypeError) as got:
        dumps(value)
    assert str(got.value) == str(want.value)


MAPPINGS: list[Any] = [
    {},
    MappingProxyType({}),
    {"kind": "time", "slot": "2026-12-01T02:00:00Z"},
    MappingProxyType({"kind": "time", "slot": "2026-12-01T02:00:00Z"}),
    OrderedDict([("b", "2"), ("a", 'quote " and é')]),
]


@pytest.mark.parametrize("m", MAPPINGS, ids=repr)
def test_mapping_json_writes_what_json_dumps_writes_of_its_dict(m: Any) -> None:
    want = json.dumps(dict(m))
    assert mapping_json(m) == want
    text = mapping_json_once()
    assert [text(m), text(m), text(dict(m))] == [want] * 3


def test_mapping_json_once_tells_apart_mappings_of_one_batch() -> None:
    text = mapping_json_once()
    maps = [{"n": str(i)} for i in range(50)]
    assert [text(m) for m in maps + maps] == [json.dumps(m) for m in maps + maps]
