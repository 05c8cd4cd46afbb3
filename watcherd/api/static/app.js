// watcherd status page: polls the JSON API and draws pipelines, schedules and runs.
// Everything from the API is inserted with textContent (never innerHTML).
"use strict";

(() => {
  const API = "/api/v1";
  const TOKEN_KEY = "watcherd-token";
  const body = document.body;
  const NEED_TOKEN_FOR_READS = body.dataset.tokenForReads === "true";
  const POLL_MS = Number(body.dataset.pollMs) || 3000;
  const TERMINAL = new Set(["Completed", "Failed", "Submitted", "Canceled", "Skipped"]);
  const SCHEDULES_PAGE = Number(body.dataset.schedulesPage) || 100;  // schedules shown at first
  const CHIPS = 6;  // schedule names shown per pipeline before "+N more"

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || "",
    pipelines: [], schedules: [], runs: [], replicas: [], ready: null,
    runsSchedule: null, timer: null, busy: false, lastOk: null,
    schedulesWanted: SCHEDULES_PAGE, schedulesMore: false,
  };

  const $ = (id) => document.getElementById(id);

  // ── DOM helpers ────────────────────────────────────────────────────────────
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  const badge = (status) => h("span", { class: "badge s-" + String(status || "").toLowerCase() }, status || "—");

  // ── time formatting ──────────────────────────────────────────────────────────
  const dtf = new Intl.DateTimeFormat(undefined, {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });

  function fmtTime(iso) {
    if (!iso) return null;
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return dtf.format(d);
  }

  function relative(iso) {
    const d = new Date(iso);
    if (!iso || Number.isNaN(d.getTime())) return "";
    const s = Math.round((d.getTime() - Date.now()) / 1000);
    const a = Math.abs(s);
    let text;
    if (a < 45) text = s >= 0 ? "in a few seconds" : "just now";
    else if (a < 3600) text = Math.round(a / 60) + " min";
    else if (a < 86400) text = Math.round(a / 3600) + " h";
    else text = Math.round(a / 86400) + " d";
    if (a < 45) return text;
    return s >= 0 ? "in " + text : text + " ago";
  }

  function timeCell(iso, empty) {
    if (!iso) return h("span", { class: "muted" }, empty || "—");
    return h("span", { class: "time", title: iso },
      h("span", {}, relative(iso)), h("span", { class: "sub" }, fmtTime(iso)));
  }

  function fmtDuration(run) {
    let secs = run.duration;
    if ((secs === null || secs === undefined) && run.started_at && run.status === "Running") {
      secs = (Date.now() - new Date(run.started_at).getTime()) / 1000;
    }
    if (secs === null || secs === undefined || Number.isNaN(secs)) return "—";
    if (secs < 10) return secs.toFixed(1) + " s";
    if (secs < 60) return Math.round(secs) + " s";
    const m = Math.floor(secs / 60), s = Math.round(secs % 60);
    if (m < 60) return m + " m " + s + " s";
    return Math.floor(m / 60) + " h " + (m % 60) + " m";
  }

  function runTrigger(run) {
    const t = run.trigger || {};
    if (t.kind === "file") {
      return h("span", { class: "mono", title: (t.datastore || "") + ":" + (t.path || "") },
        t.path || "file");
    }
    if (t.kind === "time") return h("span", { title: t.slot || "" }, "slot ", fmtTime(t.slot) || "");
    if (t.kind === "manual") {
      const by = "manual" + (t.by ? " (" + t.by + ")" : "");
      if (!t.path) return h("span", {}, by);
      return h("span", { class: "stack" }, h("span", {}, by), h("span", { class: "mono" }, t.path));
    }
    if (t.kind) return h("span", {}, t.kind);
    return h("span", { class: "muted" }, "—");
  }

  // ── API access and the token ─────────────────────────────────────────────────
  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(method, path, payload) {
    const headers = { Accept: "application/json", "X-Watcherd-Client": "web" };
    if (state.token) headers.Authorization = "Bearer " + state.token;
    const init = { method, headers, cache: "no-store" };
    if (payload !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, "daemon not reachable");
    }
    const type = res.headers.get("Content-Type") || "";
    if (!res.ok) {
      let msg = res.status + " " + res.statusText;
      if (type.includes("json")) {
        try { const j = await res.json(); if (j.error && j.error.message) msg = j.error.message; } catch (e) { /* keep */ }
      }
      throw new ApiError(res.status, msg);
    }
    if (res.status === 204) return null;
    return type.includes("json") ? res.json() : res.text();
  }

  function askToken(why) {
    const given = window.prompt((why ? why + "\n\n" : "") +
      "API token (in the daemon's state_dir/token). It is kept in this tab only.", "");
    if (given === null || !given.trim()) return false;
    state.token = given.trim();
    sessionStorage.setItem(TOKEN_KEY, state.token);
    updateTokenButton();
    return true;
  }

  function forgetToken() {
    state.token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    updateTokenButton();
  }

  function updateTokenButton() {
    $("token-button").textContent = state.token ? "Forget token" : "Set token";
  }

  // Run a mutation: ask for the token once, retry once after a 401 with a fresh token.
  async function act(method, path, payload, done) {
    if (!state.token && !askToken("This action needs the API token.")) return;
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const out = await api(method, path, payload);
        toast(done, "ok");
        refresh();
        return out;
      } catch (e) {
        if (e.status === 401 && attempt === 0) {
          forgetToken();
          if (askToken("The token was refused.")) continue;
          return null;
        }
        toast(e.message, "error");
        return null;
      }
    }
    return null;
  }

  let toastTimer = null;
  function toast(text, kind) {
    const el = $("toast");
    el.textContent = text;
    el.className = "toast " + (kind || "");
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.hidden = true; }, kind === "error" ? 8000 : 3000);
  }

  // ── rendering ────────────────────────────────────────────────────────────────
  function table(columns, rows, empty) {
    if (!rows.length) return h("div", { class: "empty" }, empty);
    const head = h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c))));
    const bodyRows = rows.map((r) => h("tr", { id: r.id, "data-status": r.status },
      r.cells.map((cell, i) => h("td", { "data-label": columns[i] }, cell))));
    return h("table", {}, head, h("tbody", {}, bodyRows));
  }

  function actions(...buttons) {
    return h("div", { class: "actions" }, buttons.filter(Boolean));
  }

  function button(label, onclick, kind) {
    return h("button", { type: "button", class: kind || "", onclick }, label);
  }

  function nameCell(name, id) {
    return h("div", { class: "name" }, h("strong", {}, name), h("span", { class: "id mono" }, id));
  }

  function lastRunCell(run) {
    if (!run) return h("span", { class: "muted" }, "never");
    return h("span", { class: "lastrun" }, badge(run.status), " ",
      timeCell(run.finished_at || run.started_at || run.queued_at));
  }

  const schedById = () => new Map(state.schedules.map((s) => [s.id, s]));
  const pipeById = () => new Map(state.pipelines.map((p) => [p.id, p]));

  function renderPipelines() {
    const scheds = schedById();
    const rows = state.pipelines.map((p) => {
      const ids = p.schedules || [];
      const names = ids.slice(0, CHIPS).map((id) => (scheds.get(id) || { name: id.slice(0, 8) }).name);
      if (ids.length > CHIPS) names.push(`+${ids.length - CHIPS} more`);
      const toggle = p.status === "Active"
        ? button("Disable", () => act("POST", `${API}/pipelines/${encodeURIComponent(p.id)}/disable`, undefined, `Pipeline ${p.name} disabled`))
        : button("Enable", () => act("POST", `${API}/pipelines/${encodeURIComponent(p.id)}/enable`, undefined, `Pipeline ${p.name} enabled`), "primary");
      return {
        id: "pipeline-" + p.id, status: p.status,
        cells: [
          nameCell(p.name, p.id), badge(p.status),
          p.description ? h("span", { class: "desc" }, p.description) : h("span", { class: "muted" }, "—"),
          names.length ? h("span", { class: "chips" }, names.map((n) => h("span", { class: "chip" }, n))) : h("span", { class: "muted" }, "none"),
          lastRunCell(p.last_run), actions(toggle),
        ],
      };
    });
    $("pipelines-count").textContent = state.pipelines.length || "";
    $("pipelines").replaceChildren(table(
      ["Pipeline", "Status", "Description", "Schedules", "Last run", ""], rows,
      "No pipelines yet. Declare one in the config file (watcherd.toml) as [pipelines.NAME], then reload the daemon (SIGHUP)."));
  }

  function triggerSchedule(s) {
    let payload = {};
    if (s.datastore) {
      const path = window.prompt(`Run ${s.name} for which file? (a file directly in ${s.datastore}/${s.path_on_datastore || ""})`, "");
      if (path === null || !path.trim()) return;
      payload = { path: path.trim() };
    }
    act("POST", `${API}/schedules/${encodeURIComponent(s.id)}/trigger`, payload, `${s.name} triggered`);
  }

  function renderSchedules() {
    const pipes = pipeById();
    const showRemoved = $("show-removed").checked;
    const list = state.schedules.filter((s) => showRemoved || s.source !== "removed");
    const rows = list.map((s) => {
      const pipe = pipes.get(s.pipeline);
      const url = `${API}/schedules/${encodeURIComponent(s.id)}`;
      const toggle = s.status === "Active"
        ? button("Disable", () => act("POST", url + "/disable", undefined, `${s.name} disabled`))
        : button("Enable", () => act("POST", url + "/enable", undefined, `${s.name} enabled`), "primary");
      const next = (s.next_fire_times || [])[0];
      const statusCell = h("div", { class: "stack" }, badge(s.status),
        h("span", { class: "tag" }, s.source === "file" ? "config file" : s.source || ""),
        s.error ? h("span", { class: "err", title: s.error }, s.error) : null);
      return {
        id: "schedule-" + s.id, status: s.status,
        cells: [
          nameCell(s.name, s.id), statusCell,
          pipe ? pipe.name : (s.pipeline || "—"),
          h("span", { class: "trigger" }, s.trigger_words || (s.cron ? "cron " + s.cron : "—")),
          s.datastore && !next ? h("span", { class: "muted" }, "on file change") : timeCell(next, s.status === "Active" ? "—" : "paused"),
          lastRunCell(s.last_run),
          actions(toggle, s.status === "Active" ? button("Trigger", () => triggerSchedule(s)) : null,
            button("Runs", () => { state.runsSchedule = s; refresh(); $("runs-panel").scrollIntoView({ behavior: "smooth" }); }, "ghost")),
        ],
      };
    });
    const active = state.schedules.filter((s) => s.status === "Active").length;
    $("schedules-count").textContent = !state.schedules.length ? ""
      : state.schedulesMore ? `first ${state.schedules.length} of ${scheduleTotal()} by name`
        : `${active} active of ${state.schedules.length}`;
    const more = state.schedulesMore
      ? h("div", { class: "more" }, button(`Show ${SCHEDULES_PAGE} more`, () => {
        state.schedulesWanted = state.schedules.length + SCHEDULES_PAGE; refresh();
      }, "ghost"))
      : null;
    $("schedules").replaceChildren(table(
      ["Schedule", "Status", "Pipeline", "Trigger", "Next run", "Last run", ""], rows,
      "No schedules yet. Add a [[schedules]] entry to watcherd.toml, or create one with the SDK (Schedule.create) or POST /api/v1/schedules."),
    ...(more ? [more] : []));
  }

  async function showLog(run) {
    if (!state.token && !askToken("Run logs need the API token.")) return;
    try {
      const text = await api("GET", `${API}/runs/${encodeURIComponent(run.id)}/log`);
      $("log-title").textContent = `Log of ${run.schedule_name || "run"} · ${run.id}`;
      $("log-text").textContent = text || "(no output kept)";
      $("log-dialog").showModal();
    } catch (e) {
      if (e.status === 401) forgetToken();
      toast(e.message, "error");
    }
  }

  function renderRuns() {
    const scheds = schedById();
    const pipes = pipeById();
    const runName = (r, sched) => {
      if (r.schedule_name || sched) return r.schedule_name || sched.name;
      if (r.schedule_id) return r.schedule_id;
      const pipe = pipes.get(r.pipeline_id);  // a submitted pipeline run has no schedule
      return (pipe ? pipe.name : r.pipeline_id || "—") + " (submitted)";
    };
    const rows = state.runs.map((r) => {
      const url = `${API}/runs/${encodeURIComponent(r.id)}`;
      const sched = scheds.get(r.schedule_id);
      return {
        id: "run-" + r.id, status: r.status,
        cells: [
          badge(r.status),
          h("div", { class: "name" }, h("strong", {}, runName(r, sched)),
            h("span", { class: "id mono" }, r.id)),
          runTrigger(r),
          timeCell(r.started_at || r.queued_at, "—"),
          fmtDuration(r),
          r.exit_code === null || r.exit_code === undefined ? h("span", { class: "muted" }, "—") : h("span", { class: "mono" }, r.exit_code),
          r.error ? h("span", { class: "err", title: r.error }, r.error) : h("span", { class: "muted" }, "—"),
          actions(
            button("Log", () => showLog(r), "ghost"),
            TERMINAL.has(r.status) ? button("Retry", () => act("POST", url + "/retry", undefined, "Run queued again")) : null,
            r.status === "Queued" || r.status === "Running" ? button("Cancel", () => act("POST", url + "/cancel", undefined, "Run canceled"), "danger") : null),
        ],
      };
    });
    $("runs-count").textContent = state.runs.length ? String(state.runs.length) : "";
    const filter = $("runs-schedule-filter");
    if (state.runsSchedule) {
      filter.hidden = false;
      filter.replaceChildren(state.runsSchedule.name + " ",
        h("button", { type: "button", class: "chip-x", "aria-label": "show all schedules", onclick: () => { state.runsSchedule = null; refresh(); } }, "×"));
    } else {
      filter.hidden = true;
    }
    $("runs").replaceChildren(table(
      ["Status", "Schedule", "Trigger", "Started", "Duration", "Exit", "Error", ""], rows,
      "No runs yet. They appear here as soon as a schedule fires."));
  }

  function renderReplicas() {
    const rows = state.replicas.map((r) => ({
      id: "replica-" + r.id, status: "",
      cells: [
        nameCell(r.host || "—", r.id),
        timeCell(r.last_heartbeat, "—"),
        timeCell(r.started, "—"),
        h("span", { title: (r.schedules || []).length + " schedule(s) owned" }, String((r.schedules || []).length)),
        h("span", { class: "mono", title: r.config_hash || "" }, (r.config_hash || "—").slice(0, 12)),
        r.running === null || r.running === undefined ? "—" : String(r.running),
      ],
    }));
    $("replicas-count").textContent = state.replicas.length > 1 ? String(state.replicas.length) : "";
    $("replicas").replaceChildren(table(
      ["Replica", "Last heartbeat", "Started", "Schedules", "Config", "Running"], rows,
      "No live replica reported."));
  }

  // Every schedule the pipelines name: the whole count even when only a page is loaded.
  const scheduleTotal = () => state.pipelines.reduce((n, p) => n + (p.schedules || []).length, 0);

  function renderSummary() {
    const active = state.schedules.filter((s) => s.status === "Active").length;
    const running = state.runs.filter((r) => r.status === "Running").length;
    const queued = state.runs.filter((r) => r.status === "Queued").length;
    const failed = state.runs.filter((r) => r.status === "Failed").length;
    const card = (label, value, kind) => h("div", { class: "card " + (kind || "") },
      h("span", { class: "value" }, value), h("span", { class: "label" }, label));
    $("summary").replaceChildren(
      card("pipelines", state.pipelines.length),
      state.schedulesMore
        ? card("schedules", String(scheduleTotal()))
        : card("active schedules", active + " / " + state.schedules.length),
      card("running · queued", running + " · " + queued, running ? "live" : ""),
      card("failed (recent)", failed, failed ? "bad" : ""));
  }

  function renderHealth(ok, text, updated) {
    $("health-dot").className = "dot " + ok;
    $("health-text").textContent = text;
    $("health-updated").textContent = updated ? "updated " + updated : "";
    $("health-updated").hidden = !updated;
  }

  function setBanner(text) {
    const el = $("banner");
    el.textContent = text || "";
    el.hidden = !text;
  }

  // ── polling ──────────────────────────────────────────────────────────────────
  // The first `wanted` schedules by name, a page at a time: at 10k schedules the page asks
  // for what it shows, not for every schedule each poll.
  async function loadSchedules(wanted) {
    const items = [];
    let cursor = null;
    do {
      const query = new URLSearchParams({ limit: String(Math.min(1000, wanted - items.length)) });
      if (cursor) query.set("cursor", cursor);
      const page = await api("GET", `${API}/schedules?${query}`);
      items.push(...page.items);
      cursor = page.next_cursor;
    } while (cursor && items.length < wanted);
    return { items, more: Boolean(cursor) };
  }

  async function load() {
    const runQuery = new URLSearchParams({ limit: "50" });
    if (state.runsSchedule) runQuery.set("schedule_id", state.runsSchedule.id);
    if ($("runs-status").value) runQuery.set("status", $("runs-status").value);
    const [pipelines, schedules, runs, replicas] = await Promise.all([
      api("GET", `${API}/pipelines`),
      loadSchedules(state.schedulesWanted),
      api("GET", `${API}/runs?${runQuery}`),
      api("GET", `${API}/replicas`).catch((e) => (e.status === 404 ? { items: [] } : Promise.reject(e))),
    ]);
    let ready = null;
    try { ready = await api("GET", "/readyz"); } catch (e) { ready = e.status === 503 ? false : null; }
    state.pipelines = pipelines.items.slice().sort((a, b) => a.name.localeCompare(b.name));
    state.schedules = schedules.items;  // by name (the API's order: pages follow it)
    state.schedulesMore = schedules.more;
    state.runs = runs.items;
    state.replicas = replicas.items.slice().sort((a, b) => String(a.id).localeCompare(String(b.id)));
    state.ready = ready;
  }

  async function refresh() {
    clearTimeout(state.timer);
    if (NEED_TOKEN_FOR_READS && !state.token) {
      $("gate").hidden = false;
      renderHealth("warn", "Token needed");
      return;
    }
    $("gate").hidden = true;
    if (state.busy) { schedule(); return; }
    state.busy = true;
    try {
      await load();
      state.lastOk = new Date();
      setBanner("");
      renderSummary(); renderPipelines(); renderSchedules(); renderRuns(); renderReplicas();
      const readyText = state.ready === false ? "Not ready" : "Running";
      renderHealth(state.ready === false ? "warn" : "ok", readyText, dtf.format(state.lastOk));
    } catch (e) {
      if (e.status === 401) {
        forgetToken();
        if (NEED_TOKEN_FOR_READS) { state.busy = false; refresh(); return; }
      }
      renderHealth("bad", e.status === 0 ? "Daemon not reachable" : "Error");
      setBanner(e.status === 0 ? "Cannot reach the daemon; retrying…" : e.message);
    } finally {
      state.busy = false;
      schedule();
    }
  }

  function schedule() {
    clearTimeout(state.timer);
    if (!document.hidden) state.timer = setTimeout(refresh, POLL_MS);
  }

  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); else clearTimeout(state.timer); });
  $("token-button").addEventListener("click", () => {
    if (state.token) { forgetToken(); toast("Token forgotten", "ok"); } else if (askToken()) { refresh(); }
  });
  $("gate-button").addEventListener("click", () => { if (askToken()) refresh(); });
  $("show-removed").addEventListener("change", renderSchedules);
  $("runs-status").addEventListener("change", refresh);
  $("log-close").addEventListener("click", () => $("log-dialog").close());

  updateTokenButton();
  if (NEED_TOKEN_FOR_READS && !state.token) askToken("This daemon is not on a loopback address, so reading needs the token.");
  refresh();
})();
