// async-tasks live dashboard: vanilla JS, no build step.
//
// Sessions: by default the page uses the browser's session cookie (HttpOnly, set by
// the server). A window opened with ?session=new gets its own session instead: its
// token lives in sessionStorage (per tab) and goes out as the X-Session-Token header
// on every fetch (cookies are neither sent nor stored in that mode), so two windows
// can show two isolated sessions side by side.
//
// Live updates: in cookie mode the page subscribes to the session event stream
// (EventSource on /tasks/events). EventSource cannot send headers, so tab mode polls
// GET /tasks plus /tasks/{id}/status every 700 ms; so does cookie mode whenever the
// stream is absent or broken (it is retried with backoff).
//
// All user-provided text goes into the DOM through textContent / attributes only.

const API = (document.querySelector('meta[name="api-base"]')?.content ?? "/api/v1").replace(/\/$/, "");
const STATUSES = ["pending", "running", "completed", "failed", "cancelled"];
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const POLL_MS = 700;
const STREAM_RESYNC_MS = 15000;
const HIDDEN_POLL_MS = 5000;
const TOKEN_KEY = "async-tasks.session-token";
const LIST_LIMIT = 200;

// ------------------------------------------------------------------ helpers

/** Create an element: el("div", {class: "x", "data-id": id}, child, "text"...). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const $ = (selector) => document.querySelector(selector);

function fmtTime(ms) {
  if (!ms) return "";
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function fmtDuration(ms) {
  if (ms === null || ms === undefined || ms < 0) return "";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  const minutes = Math.floor(ms / 60000);
  return `${minutes} min ${Math.round((ms % 60000) / 1000)} s`;
}

function pct(progress) {
  const n = Number(progress);
  return Number.isFinite(n) ? Math.max(0, Math.min(100, Math.round(n))) : 0;
}

function toast(message, kind = "info") {
  const box = $("#toasts");
  const item = el("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" },
    el("span", { class: "msg", text: message }),
    el("button", { type: "button", "aria-label": "Dismiss", text: "×", onclick: () => item.remove() }));
  box.append(item);
  while (box.children.length > 4) box.firstElementChild.remove();
  setTimeout(() => item.remove(), kind === "error" ? 9000 : 4500);
}

// ------------------------------------------------------------------ API access

class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

const session = { mode: "cookie", token: null, key: null, createFresh: false };

function initSessionMode() {
  const wanted = new URLSearchParams(location.search).get("session");
  if (wanted === "cookie") {
    sessionStorage.removeItem(TOKEN_KEY);
    history.replaceState(null, "", location.pathname);
  } else if (wanted === "new") {
    sessionStorage.removeItem(TOKEN_KEY);
    session.mode = "tab";
    session.createFresh = true;
  } else if (wanted === "tab" || sessionStorage.getItem(TOKEN_KEY)) {
    session.mode = "tab";
    session.token = sessionStorage.getItem(TOKEN_KEY);
  }
}

function adoptToken(token) {
  session.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
}

/** Call the API. `path` is relative to the API base unless it already starts with it. */
async function api(method, path, body) {
  const url = path.startsWith(`${API}/`) ? path : `${API}${path}`;
  const headers = { Accept: "application/json" };
  const init = { method, headers, cache: "no-store", credentials: session.mode === "tab" ? "omit" : "same-origin" };
  if (session.mode === "tab" && session.token) headers["X-Session-Token"] = session.token;
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch {
    throw new ApiError(0, "network_error", "Cannot reach the server.");
  }
  const issued = response.headers.get("X-Session-Token");
  if (issued && session.mode === "tab" && issued !== session.token) adoptToken(issued);
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!response.ok || (data && data.success === false)) {
    const error = data && typeof data.error === "object" ? data.error : null;
    const message = error && typeof error.message === "string" && error.message
      ? error.message
      : `The server answered ${response.status}${response.statusText ? ` ${response.statusText}` : ""}.`;
    throw new ApiError(response.status, error?.code ?? `http_${response.status}`, message, error?.details);
  }
  return data;
}

// ------------------------------------------------------------------ state

const tasks = new Map(); // id -> task record (summary + status details) with its DOM refs
const live = {
  es: null,
  streaming: false,
  streamFailures: 0,
  streamRetryAt: 0,
  lastFull: 0,
  lastStats: 0,
  lastCleanup: 0,
  dirty: true,
  statsDirty: true,
  cleanupDirty: true,
  syncing: false,
  offline: false,
  generation: 0, // bumped on session change: late answers for the old session are dropped
};
let filter = "all";

function markDirty() {
  live.dirty = true;
  live.statsDirty = true;
  wake();
}

// ------------------------------------------------------------------ task cards

function createCard(task) {
  const refs = {};
  refs.badge = el("span", { class: "badge" });
  refs.name = el("span", { class: "task-name" });
  refs.pct = el("span", { class: "pct" });
  refs.executor = el("span", { class: "executor" });
  refs.id = el("code", { text: `#${task.id.slice(0, 8)}`, title: task.id });
  refs.when = el("span");
  refs.duration = el("span");
  refs.fill = el("div", { class: "fill" });
  refs.bar = el("div", {
    class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": "0",
  }, refs.fill);
  refs.stepName = el("span", { class: "step-name" });
  refs.stepSep = el("span", { class: "step-desc", text: " — " });
  refs.stepDesc = el("span", { class: "step-desc" });
  refs.step = el("div", { class: "step" }, refs.stepName, refs.stepSep, refs.stepDesc);
  refs.error = el("div", { class: "task-error", hidden: true });
  refs.cancel = el("button", { type: "button", class: "btn-cancel", "data-action": "cancel", text: "Cancel" });
  refs.retry = el("button", { type: "button", class: "btn-retry", "data-action": "retry", text: "Retry" });
  refs.delete = el("button", { type: "button", class: "btn-delete", "data-action": "delete", text: "Delete" });
  refs.detailsBtn = el("button", { type: "button", class: "btn-details", "data-action": "details", text: "Details" });
  refs.details = el("pre", { class: "details", hidden: true });
  refs.root = el("li", { class: "task enter", "data-task-id": task.id },
    el("div", { class: "task-head" }, refs.badge, refs.name, refs.pct),
    el("div", { class: "task-meta" }, refs.executor, refs.id, refs.when, refs.duration),
    refs.bar,
    el("div", { class: "task-foot" }, refs.step,
      el("div", { class: "task-actions" }, refs.cancel, refs.retry, refs.delete, refs.detailsBtn)),
    refs.error,
    refs.details);
  // Animate the first appearance only: moving the node later must not replay it.
  refs.root.addEventListener("animationend", () => refs.root.classList.remove("enter"), { once: true });
  for (const button of [refs.cancel, refs.retry, refs.delete, refs.detailsBtn]) {
    button.addEventListener("click", () => onAction(task.id, button.dataset.action, button));
  }
  return refs;
}

function renderTask(task) {
  if (!task.refs) task.refs = createCard(task);
  const r = task.refs;
  const status = STATUSES.includes(task.status) ? task.status : "pending";
  const progress = pct(task.progress);
  r.root.dataset.status = status;
  r.badge.dataset.status = status;
  r.badge.textContent = status;
  r.name.textContent = task.name || task.executor || task.id;
  r.pct.textContent = `${progress}%`;
  r.fill.style.width = `${progress}%`;
  r.bar.setAttribute("aria-valuenow", String(progress));
  r.bar.setAttribute("aria-label", `${task.name || "task"} progress`);
  r.executor.textContent = task.executor || "";
  r.when.textContent = task.createdAt ? `created ${fmtTime(task.createdAt)}` : "";
  const took = task.startedAt && task.completedAt ? task.completedAt - task.startedAt : null;
  r.duration.textContent = took !== null ? `took ${fmtDuration(took)}` : "";
  const stepName = task.currentStep || (status === "pending" ? "Waiting to start" : "");
  r.stepName.textContent = stepName;
  r.stepDesc.textContent = task.currentStepDescription || "";
  r.stepSep.hidden = !(stepName && task.currentStepDescription);
  r.error.hidden = !task.error;
  r.error.textContent = task.error ? (status === "cancelled" ? task.error : `Error: ${task.error}`) : "";
  r.cancel.hidden = TERMINAL.has(status);
  r.retry.hidden = !(status === "failed" || status === "cancelled");
  r.delete.hidden = status === "running";
  r.root.hidden = filter !== "all" && filter !== status;
}

function upsert(data) {
  const id = data.id ?? data.taskId;
  if (!id) return null;
  let task = tasks.get(id);
  if (!task) {
    task = { id, refs: null };
    tasks.set(id, task);
  }
  mergeInto(task, data);
  return task;
}

const FIELDS = ["name", "executor", "status", "progress", "createdAt", "completedAt", "startedAt",
  "currentStep", "currentStepDescription", "error", "description"];

function mergeInto(task, data) {
  for (const key of FIELDS) if (key in data && data[key] !== undefined) task[key] = data[key];
}

function removeTask(id) {
  const task = tasks.get(id);
  if (!task) return;
  task.refs?.root.remove();
  tasks.delete(id);
}

function renderList() {
  const list = $("#tasks");
  const ordered = [...tasks.values()].sort((a, b) => (b.createdAt ?? 0) - (a.createdAt ?? 0));
  let previous = null;
  for (const task of ordered) {
    renderTask(task);
    const node = task.refs.root;
    const expected = previous ? previous.nextSibling : list.firstChild;
    if (node !== expected) list.insertBefore(node, expected);
    previous = node;
  }
  const visible = ordered.filter((t) => filter === "all" || t.status === filter).length;
  $("#empty").hidden = visible > 0;
  $("#empty").textContent = tasks.size === 0
    ? "No tasks in this session yet. Create one with the form."
    : `No ${filter} tasks.`;
  $("#task-count").textContent = live.total > tasks.size ? `${tasks.size} of ${live.total}` : `(${tasks.size})`;
}

function renderFilters() {
  const box = $("#filters");
  box.replaceChildren();
  for (const name of ["all", ...STATUSES]) {
    box.append(el("button", {
      type: "button", class: "filter", "aria-pressed": String(filter === name), "data-filter": name, text: name,
      onclick: () => { filter = name; renderFilters(); renderList(); },
    }));
  }
}

async function onAction(id, action, button) {
  const task = tasks.get(id);
  if (!task) return;
  if (action === "details") return toggleDetails(task);
  const generation = live.generation;
  button.disabled = true;
  try {
    if (action === "delete") {
      await api("DELETE", `/tasks/${encodeURIComponent(id)}`);
      if (generation === live.generation) removeTask(id);
      toast(`Deleted “${task.name ?? id}”`, "ok");
    } else {
      const answer = await api("POST", `/tasks/${encodeURIComponent(id)}/${action}`);
      if (generation === live.generation && answer?.task) {
        const fresh = answer.task;
        mergeInto(task, fresh);
        if (action === "retry") task.detailedStatus = null;
      }
      toast(`${action === "cancel" ? "Cancelled" : "Retrying"} “${task.name ?? id}”`, "ok");
    }
  } catch (error) {
    toast(error.message, "error");
  } finally {
    button.disabled = false;
    renderList();
    markDirty();
  }
}

async function toggleDetails(task) {
  const r = task.refs;
  if (!r.details.hidden) {
    r.details.hidden = true;
    r.detailsBtn.textContent = "Details";
    return;
  }
  try {
    const answer = await api("GET", `/tasks/${encodeURIComponent(task.id)}`);
    const t = answer.task;
    const shown = {
      id: t.id, status: t.status, attempts: t.attempts, description: t.description || undefined,
      params: t.params, result: t.result, error: t.error ?? undefined,
      history: t.history?.map((h) => `${fmtTime(h.at)}  ${h.previous ?? "—"} → ${h.status}${h.reason ? `  (${h.reason})` : ""}`),
    };
    r.details.textContent = JSON.stringify(shown, null, 2);
    r.details.hidden = false;
    r.detailsBtn.textContent = "Hide details";
  } catch (error) {
    toast(error.message, "error");
  }
}

// ------------------------------------------------------------------ syncing (polling path)

async function fullSync() {
  const generation = live.generation;
  // Cleared before asking, not after: an event that arrives while this sync is in
  // flight (e.g. for a task the list does not hold yet) must cause another sync.
  live.dirty = false;
  let answer;
  try {
    answer = await api("GET", `/tasks?limit=${LIST_LIMIT}`);
  } catch (error) {
    live.dirty = true;
    throw error;
  }
  if (generation !== live.generation) return;
  live.total = answer.total ?? answer.tasks.length;
  const seen = new Set();
  for (const summary of answer.tasks) {
    seen.add(summary.id);
    upsert(summary);
  }
  for (const id of [...tasks.keys()]) if (!seen.has(id)) removeTask(id);
  // /status has the step description and the error: ask for it while a task is
  // active, and once more whenever a task reaches a new status.
  const wanted = [...tasks.values()].filter((t) => !TERMINAL.has(t.status) || t.detailedStatus !== t.status);
  await Promise.all(wanted.slice(0, 50).map(async (task) => {
    try {
      const status = await api("GET", `/tasks/${encodeURIComponent(task.id)}/status`);
      if (generation !== live.generation) return;
      mergeInto(task, status);
      task.detailedStatus = status.status;
    } catch (error) {
      if (error.status === 404) removeTask(task.id);
    }
  }));
  if (generation !== live.generation) return;
  live.lastFull = Date.now();
  renderList();
}

async function refreshStats() {
  const generation = live.generation;
  live.statsDirty = false; // before asking, as in fullSync
  let answer;
  try {
    answer = await api("GET", "/tasks/stats");
  } catch (error) {
    live.statsDirty = true;
    throw error;
  }
  if (generation !== live.generation) return;
  const stats = answer.stats;
  const box = $("#stats");
  box.replaceChildren(...["total", ...STATUSES].map((key) => el("div", { class: "stat", "data-stat": key },
    el("div", { class: "n", text: stats[key] ?? 0 }), el("div", { class: "k", text: key }))));
  live.lastStats = Date.now();
}

async function refreshCleanup() {
  const answer = await api("GET", "/tasks/cleanup/status");
  const s = answer.status;
  const o = s.options ?? {};
  const last = s.lastRun && typeof s.lastRun === "object"
    ? `${fmtTime(s.lastRun.at)} (${s.lastRun.trigger}, ${fmtDuration(s.lastRun.durationMs)})`
    : "not yet";
  const rows = [
    ["Cleaner", s.isRunning ? "sweeping now" : s.isActive ? "active" : "stopped"],
    ["Keeps", `${o.maxCompletedTasks ?? "?"} completed · ${o.maxFailedTasks ?? "?"} failed` +
      (o.maxCancelledTasks !== undefined ? ` · ${o.maxCancelledTasks} cancelled` : "")],
    ["Every", fmtDuration(o.cleanupInterval)],
    ["Last run", last],
  ];
  $("#cleanup").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  live.lastCleanup = Date.now();
  live.cleanupDirty = false;
}

async function runCleanup(button) {
  button.disabled = true;
  try {
    const answer = await api("POST", "/tasks/cleanup/run");
    const r = answer.result ?? {};
    toast(`Cleanup removed ${r.removed ?? 0} task${r.removed === 1 ? "" : "s"}` +
      (r.durationMs !== undefined ? ` in ${fmtDuration(r.durationMs)}` : ""), "ok");
  } catch (error) {
    toast(error.message, "error");
  } finally {
    button.disabled = false;
    live.cleanupDirty = true;
    markDirty();
  }
}

// ------------------------------------------------------------------ event stream

function setLiveIndicator() {
  const box = $("#live");
  let mode;
  let text;
  if (live.offline) { mode = "offline"; text = "server unreachable, retrying…"; }
  else if (live.streaming) { mode = "stream"; text = "live · event stream"; }
  else { mode = "polling"; text = `live · polling every ${POLL_MS / 1000} s`; }
  box.dataset.mode = mode;
  $("#live-text").textContent = text;
}

function closeStream() {
  if (live.es) live.es.close();
  live.es = null;
  live.streaming = false;
}

function connectStream() {
  if (session.mode !== "cookie" || typeof EventSource === "undefined") return;
  closeStream();
  const es = new EventSource(`${API}/tasks/events`);
  live.es = es;
  es.addEventListener("open", () => {
    if (live.es !== es) return;
    live.streaming = true;
    live.streamFailures = 0;
    markDirty(); // resync once: events only tell what changes from now on
    setLiveIndicator();
  });
  for (const name of ["snapshot", "transition", "progress", "removed", "message"]) {
    es.addEventListener(name, (event) => { if (live.es === es) onStreamEvent(name, event); });
  }
  es.addEventListener("error", () => {
    if (live.es !== es) return;
    live.streaming = false;
    if (es.readyState === EventSource.CLOSED) {
      // Absent (404) or refused: poll, and try the stream again later.
      live.es = null;
      live.streamFailures += 1;
      live.streamRetryAt = Date.now() + Math.min(60000, 5000 * 2 ** Math.min(live.streamFailures, 4));
    }
    setLiveIndicator();
    wake();
  });
}

function onStreamEvent(name, event) {
  let data;
  try { data = JSON.parse(event.data); } catch { return; }
  const items = Array.isArray(data) ? data : Array.isArray(data?.tasks) ? data.tasks : [data];
  let changed = false;
  for (const item of items) {
    if (!item || typeof item !== "object") continue;
    const type = item.type || name;
    const id = item.taskId ?? item.id;
    if (!id) continue;
    if (session.key && item.sessionKey && item.sessionKey !== session.key) continue;
    if (type === "removed") {
      removeTask(id);
      live.statsDirty = true;
      changed = true;
      continue;
    }
    const task = tasks.get(id);
    if (!task) {
      live.dirty = true; // a task we have not listed yet (e.g. created elsewhere): fetch its name
      continue;
    }
    const previousStatus = task.status;
    mergeInto(task, item);
    if (task.status !== previousStatus) {
      live.statsDirty = true;
      if (task.status === "pending" || task.status === "running") task.error = item.error ?? null;
      if (TERMINAL.has(task.status)) live.dirty = true; // fetch completedAt and friends
    }
    changed = true;
  }
  if (changed) renderList();
  if (live.dirty || live.statsDirty) wake();
}

// ------------------------------------------------------------------ the loop

let wakeTimer = null;
let loopRunning = false;

function wake() {
  if (wakeTimer !== null) {
    clearTimeout(wakeTimer);
    wakeTimer = null;
  }
  if (!loopRunning) wakeTimer = setTimeout(loop, 30);
}

async function loop() {
  wakeTimer = null;
  if (loopRunning) return;
  loopRunning = true;
  try {
    const now = Date.now();
    if (session.mode === "cookie" && !live.es && now >= live.streamRetryAt) connectStream();
    const every = document.hidden ? HIDDEN_POLL_MS : live.streaming ? STREAM_RESYNC_MS : POLL_MS;
    const statsEvery = document.hidden ? HIDDEN_POLL_MS : live.streaming ? STREAM_RESYNC_MS : POLL_MS * 2;
    if (live.dirty || now - live.lastFull >= every) await fullSync();
    if (live.statsDirty || now - live.lastStats >= statsEvery) await refreshStats();
    if (live.cleanupDirty || now - live.lastCleanup >= 5000) await refreshCleanup();
    if (live.offline) {
      live.offline = false;
      setLiveIndicator();
    }
  } catch (error) {
    if (error instanceof ApiError && error.status === 0) {
      live.offline = true;
      setLiveIndicator();
    } else {
      console.warn("dashboard sync failed:", error);
    }
  } finally {
    loopRunning = false;
    const delay = live.dirty || live.statsDirty ? 150 : live.streaming ? 1000 : POLL_MS;
    if (wakeTimer === null) wakeTimer = setTimeout(loop, live.offline ? 2000 : delay);
  }
}

// ------------------------------------------------------------------ sessions UI

async function createSession() {
  const answer = await api("POST", "/session");
  // No token when session isolation is off (everyone shares one session).
  if (session.mode === "tab" && answer.token) adoptToken(answer.token);
  return answer;
}

async function loadSession() {
  let info = await api("GET", "/session");
  if (session.mode === "tab" && !String(info.sessionKey).startsWith("s_")) {
    // Our token is no longer valid (e.g. the server restarted with a new key).
    await createSession();
    info = await api("GET", "/session");
  }
  session.key = info.sessionKey;
  $("#session-key").textContent = info.sessionKey;
  const pill = $("#session-mode");
  pill.hidden = session.mode !== "tab";
  pill.textContent = "this window only";
  $("#back-to-cookie").hidden = session.mode !== "tab";
  document.title = `async-tasks · ${info.sessionKey}`;
}

function resetView() {
  live.generation += 1;
  for (const id of [...tasks.keys()]) removeTask(id);
  live.total = 0;
  renderList();
}

async function newSession(button) {
  button.disabled = true;
  const previous = session.key;
  try {
    await createSession();
    resetView();
    await loadSession();
    if (session.key === previous) {
      toast("Session isolation is off on this server: every client shares one session.", "info");
      markDirty();
      return;
    }
    if (session.mode === "cookie") {
      closeStream(); // reconnect with the new cookie
      live.streamRetryAt = 0;
      live.streamFailures = 0;
    }
    live.cleanupDirty = true;
    markDirty();
    toast(`New session ${session.key}`, "ok");
  } catch (error) {
    toast(error.message, "error");
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ forms from JSON schema

function resolveRef(schema, root) {
  let current = schema ?? {};
  for (let hops = 0; current && current.$ref && hops < 20; hops += 1) {
    const name = current.$ref.replace(/^#\/\$defs\//, "");
    const { $ref, ...rest } = current;
    current = { ...(root.$defs?.[name] ?? {}), ...rest };
  }
  return current ?? {};
}

/** A field description {name, kind, required, nullable, schema} for one property. */
function fieldSpec(name, property, root, required) {
  let schema = resolveRef(property, root);
  let nullable = false;
  const options = schema.anyOf ?? schema.oneOf;
  if (Array.isArray(options)) {
    const resolved = options.map((o) => resolveRef(o, root));
    const nonNull = resolved.filter((o) => o.type !== "null");
    nullable = nonNull.length < resolved.length;
    const outer = { description: schema.description, default: schema.default, title: schema.title };
    schema = nonNull.length === 1 ? { ...nonNull[0], ...strip(outer) } : { ...strip(outer), _mixed: true };
  }
  if (Array.isArray(schema.type)) {
    const types = schema.type.filter((t) => t !== "null");
    nullable = nullable || types.length < schema.type.length;
    schema = { ...schema, type: types.length === 1 ? types[0] : undefined };
  }
  let kind = "json";
  if (Array.isArray(schema.enum)) kind = "enum";
  else if (schema.type === "boolean") kind = "boolean";
  else if (schema.type === "integer") kind = "integer";
  else if (schema.type === "number") kind = "number";
  else if (schema.type === "string") kind = "string";
  else if (schema.type === "array") {
    const items = schema.items ? resolveRef(schema.items, root) : {};
    kind = !items.type || items.type === "string" ? "lines" : "json";
  }
  return { name, kind, required, nullable, schema };
}

/** Text with `backtick` spans as <code> nodes (built as nodes, never parsed as HTML). */
function withCode(text) {
  return String(text).split("`").map((part, index) => (index % 2 ? el("code", { text: part }) : part));
}

function strip(object) {
  return Object.fromEntries(Object.entries(object).filter(([, v]) => v !== undefined));
}

function boundsHint(spec) {
  const s = spec.schema;
  const parts = [];
  if (spec.kind === "integer" || spec.kind === "number") {
    if (s.minimum !== undefined && s.maximum !== undefined) parts.push(`${s.minimum}–${s.maximum}`);
    else if (s.minimum !== undefined) parts.push(`≥ ${s.minimum}`);
    else if (s.maximum !== undefined) parts.push(`≤ ${s.maximum}`);
    if (s.exclusiveMinimum !== undefined) parts.push(`> ${s.exclusiveMinimum}`);
    if (s.exclusiveMaximum !== undefined) parts.push(`< ${s.exclusiveMaximum}`);
  }
  if (spec.kind === "string" && s.maxLength !== undefined) parts.push(`max ${s.maxLength} chars`);
  if (spec.kind === "lines") {
    if (s.minItems !== undefined) parts.push(`min ${s.minItems}`);
    if (s.maxItems !== undefined) parts.push(`max ${s.maxItems} items`);
  }
  if (s.default !== undefined && s.default !== null && spec.kind !== "boolean") {
    parts.push(`default ${typeof s.default === "object" ? JSON.stringify(s.default) : s.default}`);
  }
  return parts.join(" · ");
}

function buildInput(spec, id) {
  const s = spec.schema;
  const common = { id, name: spec.name, "data-kind": spec.kind };
  switch (spec.kind) {
    case "integer":
    case "number":
      return el("input", {
        ...common, type: "number", inputmode: spec.kind === "integer" ? "numeric" : "decimal",
        step: spec.kind === "integer" ? "1" : "any",
        min: s.minimum ?? s.exclusiveMinimum, max: s.maximum ?? s.exclusiveMaximum,
        value: typeof s.default === "number" ? String(s.default) : undefined,
      });
    case "string":
      return el("input", {
        ...common, type: "text", maxlength: s.maxLength, autocomplete: "off",
        value: typeof s.default === "string" ? s.default : undefined,
        placeholder: Array.isArray(s.examples) && s.examples.length ? `e.g. ${s.examples[0]}` : undefined,
      });
    case "boolean":
      return el("input", { ...common, type: "checkbox", checked: s.default === true });
    case "enum": {
      const select = el("select", common);
      if (!spec.required && s.default === undefined) select.append(el("option", { value: "", text: "(default)" }));
      s.enum.forEach((value, index) => select.append(el("option", {
        value: String(index), text: value === null ? "null" : String(value), selected: value === s.default,
      })));
      return select;
    }
    case "lines": {
      let value;
      if (Array.isArray(s.default)) {
        value = s.default.every((v) => typeof v === "string") ? s.default.join("\n") : JSON.stringify(s.default);
      }
      return el("textarea", {
        ...common, rows: "4", spellcheck: "false",
        placeholder: "one item per line, or a JSON array like [\"a\", 2, {\"fail\": true}]",
        text: value,
      });
    }
    default: {
      const value = s.default !== undefined && s.default !== null ? JSON.stringify(s.default, null, 2) : undefined;
      return el("textarea", {
        ...common, rows: "3", spellcheck: "false", placeholder: "JSON, e.g. {\"key\": \"value\"}", text: value,
      });
    }
  }
}

class FieldError extends Error {
  constructor(field, message) {
    super(message);
    this.field = field;
  }
}

/** The value of one field, or undefined to leave it out (the server's default applies). */
function readField(spec, input) {
  const s = spec.schema;
  if (spec.kind === "boolean") return input.checked;
  if (spec.kind === "enum") return input.value === "" ? undefined : s.enum[Number(input.value)];
  const raw = input.value;
  const text = spec.kind === "string" ? raw : raw.trim();
  if (text === "") {
    if (spec.kind === "string" && spec.required && !spec.nullable) return "";
    return undefined;
  }
  switch (spec.kind) {
    case "integer":
    case "number": {
      const n = Number(text);
      if (!Number.isFinite(n)) throw new FieldError(spec.name, `${spec.name}: enter a number.`);
      if (spec.kind === "integer" && !Number.isInteger(n)) throw new FieldError(spec.name, `${spec.name}: enter a whole number.`);
      return n;
    }
    case "string":
      return raw;
    case "lines":
      if (text.startsWith("[")) {
        try {
          const parsed = JSON.parse(text);
          if (Array.isArray(parsed)) return parsed;
        } catch { /* not JSON: one item per line */ }
      }
      return text.split(/\r?\n/).map((line) => line.trim()).filter((line) => line !== "");
    default:
      try {
        return JSON.parse(text);
      } catch {
        throw new FieldError(spec.name, `${spec.name}: not valid JSON.`);
      }
  }
}

function buildForm(executor) {
  const root = executor.paramsSchema ?? {};
  const body = resolveRef(root, root);
  const required = new Set(body.required ?? []);
  const specs = Object.entries(body.properties ?? {}).map(([name, prop]) => fieldSpec(name, prop, root, required.has(name)));
  const acceptsDescription = !("description" in (body.properties ?? {}));
  if (acceptsDescription) {
    specs.push({ name: "description", kind: "string", required: false, nullable: true, option: true,
      schema: { maxLength: 2000, description: "Optional task description (a task option, not a param)." } });
  }
  const form = el("form", { class: "exec-form", "data-executor": executor.name, novalidate: true, role: "tabpanel" });
  form.append(el("h3", { text: executor.title || executor.name }));
  if (executor.description) form.append(el("p", { class: "exec-desc" }, ...withCode(executor.description)));
  if (executor.steps?.length) {
    form.append(el("p", { class: "steps-line", text: `Steps: ${executor.steps.map((s) => s.name).join(" → ")}` }));
  }
  const errorBox = el("p", { class: "form-error", role: "alert", hidden: true });
  const inputs = new Map();
  specs.forEach((spec, index) => {
    const id = `f-${executor.name.replace(/[^A-Za-z0-9_-]/g, "_")}-${index}`;
    const input = buildInput(spec, id);
    inputs.set(spec.name, { spec, input });
    const hint = boundsHint(spec);
    const label = el("label", { for: id },
      el("code", { text: spec.name }),
      spec.required ? el("span", { class: "req", title: "required", text: "*" }) : null,
      hint ? el("span", { class: "hint", text: hint }) : null);
    const help = spec.schema.description ? el("p", { class: "help" }, ...withCode(spec.schema.description)) : null;
    if (spec.kind === "boolean") {
      label.prepend(input);
      form.append(el("div", { class: "field check" }, label, help));
    } else {
      form.append(el("div", { class: "field" }, label, input, help));
    }
    input.addEventListener("input", () => input.removeAttribute("aria-invalid"));
  });
  const submit = el("button", { type: "submit", class: "btn btn-primary", text: `Start ${executor.name}` });
  form.append(errorBox, el("div", { class: "form-actions" }, submit));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errorBox.hidden = true;
    for (const { input } of inputs.values()) input.removeAttribute("aria-invalid");
    const payload = {};
    try {
      for (const [name, { spec, input }] of inputs) {
        const value = readField(spec, input);
        if (value !== undefined) payload[name] = value;
      }
    } catch (error) {
      if (error instanceof FieldError) {
        inputs.get(error.field)?.input.setAttribute("aria-invalid", "true");
        errorBox.textContent = error.message;
        errorBox.hidden = false;
        return;
      }
      throw error;
    }
    submit.disabled = true;
    const generation = live.generation;
    try {
      const answer = await api("POST", executor.demoPath || `/demo/tasks/${encodeURIComponent(executor.name)}`, payload);
      const created = answer.task;
      if (generation === live.generation && created?.id && !tasks.has(created.id)) {
        upsert({ ...created, executor: executor.name, createdAt: Date.now() });
      }
      renderList();
      toast(`Started “${created?.name ?? executor.name}”`, "ok");
      markDirty();
    } catch (error) {
      errorBox.textContent = error.message;
      errorBox.hidden = false;
      for (const detail of Array.isArray(error.details) ? error.details : []) {
        const key = detail && typeof detail.key === "string" ? detail.key.replace(/^params\./, "") : null;
        if (key && inputs.has(key)) inputs.get(key).input.setAttribute("aria-invalid", "true");
      }
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

async function loadExecutors() {
  const answer = await api("GET", "/executors");
  const executors = answer.executors ?? [];
  const tabs = $("#executor-tabs");
  const forms = $("#executor-forms");
  tabs.replaceChildren();
  forms.replaceChildren();
  if (!executors.length) {
    forms.append(el("p", { class: "muted", text: "No executors are registered." }));
    return;
  }
  const initial = executors.find((e) => e.name === "sample") ?? executors[0];
  const select = (name) => {
    for (const tab of tabs.children) tab.setAttribute("aria-selected", String(tab.dataset.executor === name));
    for (const form of forms.children) form.hidden = form.dataset.executor !== name;
  };
  for (const executor of executors) {
    tabs.append(el("button", {
      type: "button", class: "tab", role: "tab", "data-executor": executor.name, title: executor.title,
      text: executor.name, onclick: () => select(executor.name),
    }));
    forms.append(buildForm(executor));
  }
  select(initial.name);
}

// ------------------------------------------------------------------ start

async function main() {
  initSessionMode();
  renderFilters();
  setLiveIndicator();
  $("#new-session").addEventListener("click", (event) => newSession(event.currentTarget));
  $("#run-cleanup").addEventListener("click", (event) => runCleanup(event.currentTarget));
  document.addEventListener("visibilitychange", () => { if (!document.hidden) markDirty(); });
  try {
    if (session.mode === "tab" && (session.createFresh || !session.token)) {
      await createSession();
      history.replaceState(null, "", "?session=tab");
    }
    await loadSession();
  } catch (error) {
    toast(`Could not start a session: ${error.message}`, "error");
  }
  try {
    await loadExecutors();
  } catch (error) {
    $("#executor-forms").replaceChildren(el("p", { class: "form-error", text: `Could not load executors: ${error.message}` }));
  }
  document.body.dataset.ready = "true";
  loop();
}

main();
