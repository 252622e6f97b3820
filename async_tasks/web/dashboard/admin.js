// The admin page: every session's tasks, the queues and the workers, from the admin API
// (GET/POST <api>/admin/...). The admin key is asked once and kept in this tab's
// session storage; every request sends it as a bearer token. Text from the server is
// only ever set as textContent.

const API = (document.querySelector('meta[name="api-base"]')?.content ?? "/api/v1").replace(/\/$/, "");
const ADMIN = `${API}/admin`;
const KEY_ITEM = "async-tasks-admin-key";
const REFRESH_MS = 2000;

const $ = (id) => document.getElementById(id);
let timer = null;

class Refused extends Error {}

async function call(method, path, body) {
  const key = sessionStorage.getItem(KEY_ITEM);
  const init = { method, headers: { Authorization: `Bearer ${key}` } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(`${ADMIN}${path}`, init);
  const answer = await response.json().catch(() => ({}));
  if (response.status === 401) throw new Refused(answer.error?.message ?? "The admin key was refused.");
  if (!response.ok) throw new Error(answer.error?.message ?? `HTTP ${response.status}`);
  return answer;
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text ?? "";
  if (className) td.className = className;
  return td;
}

function fill(tableId, items, render) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren();
  for (const item of items) render(body.insertRow(), item);
  if (!items.length) cell(body.insertRow(), "none", "muted").colSpan = 7;
}

function ago(ms) {
  const seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return seconds < 60 ? `${seconds}s ago` : seconds < 3600 ? `${Math.round(seconds / 60)}m ago` : `${Math.round(seconds / 3600)}h ago`;
}

function taskQuery() {
  const form = new FormData($("filters"));
  const query = new URLSearchParams({ limit: "200" });
  for (const name of ["status", "executor", "sessionKey"]) {
    const value = String(form.get(name) ?? "").trim();
    if (value) query.set(name, value);
  }
  if (form.get("deadLetter")) query.set("deadLetter", "true");
  return query;
}

const selected = new Set();

async function refresh() {
  const [queues, workers, sessions, tasks] = await Promise.all([
    call("GET", "/queues"),
    call("GET", "/workers"),
    call("GET", "/sessions?limit=50"),
    call("GET", `/tasks?${taskQuery()}`),
  ]);
  fill("queues", queues.queues, (row, q) => {
    cell(row, q.executor);
    cell(row, String(q.running));
    cell(row, String(q.queued));
  });
  fill("workers", workers.workers, (row, w) => {
    cell(row, w.id);
    cell(row, w.host);
    cell(row, w.executors.join(", "));
    cell(row, `${w.running} / ${w.concurrency}`);
    cell(row, w.leaseAgeMs === null ? "this process" : `${w.leaseAgeMs} ms`);
  });
  $("sessions-total").textContent = `${sessions.total} holding tasks`;
  fill("sessions", sessions.sessions, (row, s) => {
    const link = document.createElement("a");
    link.href = "#";
    link.textContent = s.sessionKey;
    link.title = "Show this session's tasks";
    link.addEventListener("click", (event) => {
      event.preventDefault();
      $("filters").elements.sessionKey.value = s.sessionKey;
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
  const shown = new Set(tasks.tasks.map((t) => t.id));
  for (const id of [...selected]) if (!shown.has(id)) selected.delete(id);
  fill("tasks", tasks.tasks, (row, t) => {
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
    cell(row, t.error ?? "");
  });
}

async function update() {
  clearTimeout(timer);
  try {
    await refresh();
  } catch (error) {
    if (error instanceof Refused) return lock(error.message);
    $("result").textContent = error.message;
  }
  timer = setTimeout(update, REFRESH_MS);
}

async function bulk(action, body) {
  try {
    const { result } = await call("POST", `/tasks/${action}`, body);
    const more = result.more ? `, ${result.more} more matched` : "";
    $("result").textContent = `${action}: ${result.changed.length} changed, ${result.skipped.length} skipped${more}`;
    selected.clear();
  } catch (error) {
    if (error instanceof Refused) return lock(error.message);
    $("result").textContent = error.message;
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
  $("key").focus();
}

function open() {
  $("unlock").hidden = true;
  $("view").hidden = false;
  $("lock").hidden = false;
  update();
}

$("unlock").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_ITEM, $("key").value.trim());
  $("key").value = "";
  open();
});
$("lock").addEventListener("click", () => lock());
$("filters").addEventListener("change", update);
$("filters").addEventListener("submit", (event) => {
  event.preventDefault();
  update();
});
$("select-all").addEventListener("change", (event) => {
  for (const box of $("tasks").tBodies[0].querySelectorAll("input[type=checkbox]")) {
    box.checked = event.target.checked;
    box.dispatchEvent(new Event("change"));
  }
});
$("cancel-selected").addEventListener("click", () => selected.size && bulk("cancel", { ids: [...selected] }));
$("retry-selected").addEventListener("click", () => selected.size && bulk("retry", { ids: [...selected] }));
$("retry-dead").addEventListener("click", () => bulk("retry", { filter: { deadLetter: true } }));

if (sessionStorage.getItem(KEY_ITEM)) open();
else lock();
