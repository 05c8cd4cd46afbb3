"""A restart on the config last applied takes the declared rows as they are (engine.reconcile's
mark, SQLite schema 5): nothing is computed or decoded for them, and the result is what a full
reconcile gives. Anything else writing a declared row drops the mark."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.clocks import ManualClock
from tests.engine_helpers import load_config, running_engine
from watcherd import config as config_mod
from watcherd.core.stored_spec import StoredSpec, spec_text
from watcherd.engine import reconcile as reconcile_mod

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)

TEXT = """
[daemon]
api = ""
[pipelines.p]
kind = "command"
steps = [["true"]]
[datastores.in]
kind = "local"
root = "{inbox}"
[[schedules]]
name = "every-hour"
pipeline = "p"
experiment_name = "E"
recurrence = {{ frequency = "Hour", interval = 1, start_time = "2026-01-01T00:05:00" }}
[[schedules]]
name = "nightly"
pipeline = "p"
experiment_name = "E"
cron = "{cron}"
time_zone = "Europe/Paris"
[[schedules]]
name = "files"
pipeline = "p"
experiment_name = "E"
datastore = "in"
polling_interval = 60
[[schedules]]
name = "v2"
pipeline = "p"
experiment_name = "E"
[schedules.trigger]
type = "recurrence"
frequency = "day"
interval = 1
schedule = {{ hours = [3], minutes = [0] }}
"""


def _text(tmp_path: Path, cron: str = "0 2 * * *") -> str:
    (tmp_path / "in").mkdir(exist_ok=True)
    return TEXT.format(inbox=tmp_path / "in", cron=cron)


class _Counting:
    """Counts schedule_to_dict calls and spec decodings."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.specs = self.decoded = 0
        real_to_dict, real_decode = config_mod.schedule_to_dict, StoredSpec._decoded

        def to_dict(*a: Any, **k: Any) -> Any:
            self.specs += 1
            return real_to_dict(*a, **k)

        def decoded(spec: StoredSpec) -> Any:
            self.decoded += spec._value is None
            return real_decode(spec)

        monkeypatch.setattr(reconcile_mod.config_mod, "schedule_to_dict", to_dict)
        monkeypatch.setattr(StoredSpec, "_decoded", decoded)

    def reset(self) -> None:
        self.specs = self.decoded = 0


def _mark(h: Any) -> str | None:
    row = h.store.db.sync(lambda c: c.execute("SELECT value FROM meta").fetchone())
    return row[0] if row else None


def _state(h: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    return dict(h.engine.book.schedules), dict(h.engine.book.rows)


async def test_a_restart_on_the_same_config_computes_and_decodes_no_declared_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock(NOW)
    text = _text(tmp_path)
    async with running_engine(tmp_path, text, clock) as h:
        assert _mark(h) == reconcile_mod.applied_mark(h.engine.config)
        await h.manager.set_schedule_status("nightly", "Disabled")  # a run-time change
        assert _mark(h) is not None  # the spec, trigger and file status did not change
    count = _Counting(monkeypatch)
    async with running_engine(tmp_path, text, clock) as h:
        assert (count.specs, count.decoded) == (0, 0)
        taken = _state(h)
        assert h.engine.book.schedules[h.engine.schedule("nightly").id].status.value == "Disabled"
        # the same as a full reconcile of the same rows
        rows = {r.id: r for r in await h.store.load_schedules()}
        full = reconcile_mod.reconcile(
            h.engine.config, rows, await h.store.load_pipelines(), clock.now()
        )
        assert (full.schedules, full.rows) == taken and full.changed == []
    count.reset()
    changed = _text(tmp_path, cron="30 2 * * *")  # one schedule changes: a full reconcile
    async with running_engine(tmp_path, changed, clock) as h:
        assert count.specs == 4
        assert _mark(h) == reconcile_mod.applied_mark(h.engine.config)
        nightly = h.engine.book.rows[h.engine.schedule("nightly").id]
        assert nightly.spec["cron"] == "30 2 * * *"
    count.reset()
    async with running_engine(tmp_path, changed, clock) as h:
        assert (count.specs, count.decoded) == (0, 0)
        assert h.engine.book.rows[h.engine.schedule("nightly").id].spec["cron"] == "30 2 * * *"


async def test_a_declared_row_written_by_anything_else_drops_the_mark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock(NOW)
    text = _text(tmp_path)
    async with running_engine(tmp_path, text, clock) as h:
        sid = h.engine.schedule("every-hour").id
        sql = h.store.db.sync
        sql(lambda c: c.execute("UPDATE schedules SET cursor=? WHERE id=?", (NOW.isoformat(), sid)))
        assert _mark(h) is not None  # timer state is not the config's
        sql(lambda c: c.execute("UPDATE schedules SET spec=spec WHERE id=?", (sid,)))
        assert _mark(h) is not None  # the same text
        sql(
            lambda c: c.execute(
                "UPDATE schedules SET spec=json_set(spec, '$.description', 'x') WHERE id=?",
                (sid,),
            )
        )
        assert _mark(h) is None
    count = _Counting(monkeypatch)
    async with running_engine(tmp_path, text, clock) as h:
        assert count.specs == 4  # computed and compared again: the file wins
        assert h.engine.book.rows[sid].spec["description"] == ""
        assert _mark(h) is not None
        h.store.db.sync(lambda c: c.execute("DELETE FROM schedules WHERE id=?", (sid,)))
        assert _mark(h) is None


def test_a_config_built_in_code_is_never_taken_as_applied(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, _text(tmp_path))
    assert reconcile_mod.applied_mark(cfg) is not None
    assert reconcile_mod.applied_mark(dataclasses.replace(cfg, digest="")) is None


def test_the_spec_shape_is_pinned(tmp_path: Path) -> None:
    """config.schedule_to_dict's output is what a marked row holds: when it changes, bump
    reconcile.SPEC_SHAPE (rows written by an older watcherd are then compared again) and
    this pin."""
    cfg = load_config(tmp_path, _text(tmp_path))
    specs = [config_mod.schedule_to_dict(s, cfg) for s in cfg.schedules]
    text = json.dumps(specs, sort_keys=True).replace(str(tmp_path), "<tmp>")
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    assert (reconcile_mod.SPEC_SHAPE, digest) == ("1", "d1b7ccdb34b2ed40")


def test_a_stored_spec_decodes_on_first_use_and_compares_as_its_object() -> None:
    text = spec_text({"b": [1, 2], "a": {"x": None}})
    assert text == '{"a": {"x": null}, "b": [1, 2]}'
    spec = StoredSpec(text)
    assert spec._value is None and spec_text(spec) is text
    assert spec == {"a": {"x": None}, "b": [1, 2]} and spec != {"a": 1}
    assert spec == StoredSpec(text) and spec == StoredSpec('{"b": [1, 2], "a": {"x": null}}')
    assert dict(spec.items()) == {"a": {"x": None}, "b": [1, 2]} and len(spec) == 2
    assert spec != StoredSpec('{"a": 1}')
    with pytest.raises(ValueError, match="not a JSON object"):
        len(StoredSpec("[1]"))


def test_schedules_sharing_a_trigger_get_what_each_would_alone(tmp_path: Path) -> None:
    """reconcile derives a trigger's key and new timer once per trigger object: the rows
    equal those of the same config with every trigger a separate (equal) object."""
    copies = "".join(
        f'''
[[schedules]]
name = "copy{i}"
pipeline = "p"
experiment_name = "E"
recurrence = {{ frequency = "Day", interval = 1, time_zone = "Europe/Paris" }}
[[schedules]]
name = "cron{i}"
pipeline = "p"
experiment_name = "E"
cron = "0 4 * * *"
status = "{"Disabled" if i == 2 else "Active"}"
'''
        for i in range(3)
    )
    path = tmp_path / "w.toml"
    path.write_text(_text(tmp_path) + copies)
    cfg = config_mod.load(path, {})
    shared = [s for s in cfg.schedules if s.name.startswith(("copy", "cron"))]
    assert shared[0].trigger is shared[2].trigger and shared[1].trigger is shared[3].trigger
    apart = dataclasses.replace(
        cfg,
        schedules=tuple(
            dataclasses.replace(s, trigger=dataclasses.replace(s.trigger)) for s in cfg.schedules
        ),
    )
    got = reconcile_mod.reconcile(cfg, {}, {}, NOW)
    want = reconcile_mod.reconcile(apart, {}, {}, NOW)
    assert got.rows == want.rows and got.fresh == want.fresh
    assert got.rows[shared[5].id].cursor != got.rows[shared[3].id].cursor  # Disabled: now
