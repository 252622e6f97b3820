// @ts-check
// The admin page: every session's tasks, the queues and the workers, from the admin API
// (GET/POST <api>/admin/...). The admin key is asked once and kept in this tab's
// session storage; every request sends it as a bearer token. Text from the server is
// only ever set as textContent.

/**
 * What the page reads of the admin API's answers (web/api/admin.py).
 * @typedef {{executor: string, running: number, queued: number, workers: number}} AdminQueue
 * @typedef {{id: string, host: string, executors: string[], running: number, concurrency: number,
 *   leaseAgeMs: number | null}} AdminWorker
 * @typedef {{sessionKey: string, total: number, pending: number, running: number, failed: number,
 *   lastActiveAt: number}} AdminSession
 * @typedef {{id: string, name: string, executor: string, status: string, progress: number,
 *   sessionKey: string, error: string | null, deadLettered: boolean, scheduledAt: number | null,
 *   waitingReason: string | null}} AdminTask
 * @typedef {{changed: string[], skipped: string[], more?: number}} BulkResult
 */

const API = (document.querySelector('meta[name="api-base"]')?.getAttribute("content") ?? "/api/v1").replace(
  /\/$/,
  "",
);
const ADMIN = `${API}/admin`;
const KEY_ITEM = "async-tasks-admin-key";
const REFRESH_MS = 2000;

/**
 * The page's element with this id, of the type the page has there (it is always there).
 * @template {HTMLElement} T
 * @param {string} id
 * @param {new () => T} type
 * @returns {T}
 */
function byId(id, type) {
  const node = document.getElementById(id);
  if (!(node instanceof type)) throw new Error(`#${id} is missing from the page`);
  return node;
}

/** @param {string} id */
const $ = (id) => byId(id, HTMLElement);
/** @param {string} id */
const table = (id) => byId(id, HTMLTableElement);
const filters = () => byId("filters", HTMLFormElement);
const keyInput = () => byId("key", HTMLInputElement);
/** @type {ReturnType<typeof setTimeout> | undefined} */
let timer;

class Refused extends Error {}

/**
 * One admin API call with the tab's key; a refused key throws `Refused`.
 * @param {string} method
 * @param {string} path
 * @param {unknown} [body]
 * @returns {Promise<any>}
 */
async function call(method, path, body) {
  const key = sessionStorage.getItem(KEY_ITEM);
  /** @type {Record<string, string>} */
  const headers = { Authorization: `Bearer ${key}` };
  /** @type {RequestInit} */
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(`${ADMIN}${path}`, init);
  const answer = await response.json().catch(() => ({}));
  if (response.status === 401) throw new Refused(answer.error?.message ?? "The admin key was refused.");
  if (!response.ok) throw new Error(answer.error?.message ?? `HTTP ${response.status}`);
  return answer;
}

/**
 * @param {HTMLTableRowElement} row
 * @param {string | null | undefined} text
 * @param {string} [className]
 */
function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text ?? "";
  if (className) td.className = className;
  return td;
}

/**
 * @template T
 * @param {string} tableId
 * @param {T[]} items
 * @param {(row: HTMLTableRowElement, item: T) => void} render
 */
function fill(tableId, items, render) {
  const body = table(tableId).tBodies[0];
  body.replaceChildren();
  for (const item of items) render(body.insertRow(), item);
  if (!items.length) cell(body.insertRow(), "none", "muted").colSpan = 7;
}

/** @param {number} ms */
function ago(ms) {
  const seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return seconds < 60 ? `${seconds}s ago` : seconds < 3600 ? `${Math.round(seconds / 60)}m ago` : `${Math.round(seconds / 3600)}h ago`;
}

function taskQuery() {
  const form = new FormData(filters());
  const query = new URLSearchParams({ limit: "200" });
  for (const name of ["status", "executor", "sessionKey"]) {
    const value = String(form.get(name) ?? "").trim();
    if (value) query.set(name, value);
  }
  if (form.get("deadLetter")) query.set("deadLetter", "true");
  return query;
}

/** @type {Set<string>} */
const selected = new Set();

async function refresh() {
  const [queues, workers, sessions, tasks] = await Promise.all([
    call("GET", "/queues"),
    call("GET", "/workers"),
    call("GET", "/sessions?limit=50"),
    call("GET", `/tasks?${taskQuery()}`),
  ]);
  fill("queues", /** @type {AdminQueue[]} */ (queues.queues), (row, q) => {
    cell(row, q.executor);
    cell(row, String(q.running));
    cell(row, String(q.queued));
    // No live worker runs it: its tasks wait until one that does joins.
    const stranded = q.workers === 0 && q.queued > 0;
    cell(row, stranded ? "none: its tasks wait" : String(q.workers), stranded ? "error" : undefined);
  });
  fill("workers", /** @type {AdminWorker[]} */ (workers.workers), (row, w) => {
    cell(row, w.id);
    cell(row, w.host);
    cell(row, w.executors.join(", "));
    cell(row, `${w.running} / ${w.concurrency}`);
    cell(row, w.leaseAgeMs === null ? "this process" : `${w.leaseAgeMs} ms`);
  });
  $("sessions-total").textContent = `${sessions.total} holding tasks`;
  fill("sessions", /** @type {AdminSession[]} */ (sessions.sessions), (row, s) => {
    const link = document.createElement("a");
    link.href = "#";
    link.textContent = s.sessionKey;
    link.title = "Show this session's tasks";
    link.addEventListener("click", (event) => {
      event.preventDefault();
      const sessionKey = filters().elements.namedItem("sessionKey");
      if (sessionKey instanceof HTMLInputElement) sessionKey.value = s.sessionKey;
      update();
    });
    row.insertCell().append(link);
    cell(row, String(s.total));
    cell(row, String(s.pending));
    cell(row, String(s.running));
    cell(row, String(s.failed));
    cell(row, ago(s.lastActiveAt));
  });
  $("tasks-total").textContent = `${tasks.count} of ${tasks.total}`;
  /** @type {AdminTask[]} */
  const listed = tasks.tasks;
  const shown = new Set(listed.map((t) => t.id));
  for (const id of [...selected]) if (!shown.has(id)) selected.delete(id);
  fill("tasks", listed, (row, t) => {
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = selected.has(t.id);
    box.setAttribute("aria-label", `Select ${t.name}`);
    box.addEventListener("change", () => (box.checked ? selected.add(t.id) : selected.delete(t.id)));
    row.insertCell().append(box);
    const name = cell(row, t.name);
    name.title = t.id;
    cell(row, t.executor);
    cell(row, t.deadLettered ? `${t.status} (dead letter)` : t.status, `status-${t.status}`);
    cell(row, `${Math.round(t.progress)}%`);
    cell(row, t.sessionKey).classList.add("muted");
    cell(row, t.error ?? t.waitingReason ?? (t.scheduledAt ? `starts ${new Date(t.scheduledAt).toLocaleString()}` : ""));
  });
}

async function update() {
  clearTimeout(timer);
  try {
    await refresh();
  } catch (error) {
    if (error instanceof Refused) return lock(error.message);
    $("result").textContent = error instanceof Error ? error.message : String(error);
  }
  timer = setTimeout(update, REFRESH_MS);
}

/**
 * @param {"cancel" | "retry"} action
 * @param {{ids: string[]} | {filter: {deadLetter: boolean}}} body
 */
async function bulk(action, body) {
  try {
    /** @type {{result: BulkResult}} */
    const { result } = await call("POST", `/tasks/${action}`, body);
    const more = result.more ? `, ${result.more} more matched` : "";
    $("result").textContent = `${action}: ${result.changed.length} changed, ${result.skipped.length} skipped${more}`;
    selected.clear();
  } catch (error) {
    if (error instanceof Refused) return lock(error.message);
    $("result").textContent = error instanceof Error ? error.message : String(error);
  }
  update();
}

function lock(message = "") {
  clearTimeout(timer);
  sessionStorage.removeItem(KEY_ITEM);
  $("view").hidden = true;
  $("lock").hidden = true;
  $("unlock").hidden = false;
  $("unlock-error").textContent = message;
  keyInput().focus();
}

function open() {
  $("unlock").hidden = true;
  $("view").hidden = false;
  $("lock").hidden = false;
  update();
}

$("unlock").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_ITEM, keyInput().value.trim());
  keyInput().value = "";
  open();
});
$("lock").addEventListener("click", () => lock());
filters().addEventListener("change", update);
filters().addEventListener("submit", (event) => {
  event.preventDefault();
  update();
});
const selectAll = byId("select-all", HTMLInputElement);
selectAll.addEventListener("change", () => {
  for (const box of table("tasks").tBodies[0].querySelectorAll("input[type=checkbox]")) {
    if (!(box instanceof HTMLInputElement)) continue;
    box.checked = selectAll.checked;
    box.dispatchEvent(new Event("change"));
  }
});
$("cancel-selected").addEventListener("click", () => selected.size && bulk("cancel", { ids: [...selected] }));
$("retry-selected").addEventListener("click", () => selected.size && bulk("retry", { ids: [...selected] }));
$("retry-dead").addEventListener("click", () => bulk("retry", { filter: { deadLetter: true } }));

if (sessionStorage.getItem(KEY_ITEM)) open();
else lock();
