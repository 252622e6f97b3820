// @ts-check
// Keeping the page live: the session event stream when it can, polling otherwise.
//
// The page subscribes to the session event stream (EventSource on /tasks/events); a
// window with its own session (tab mode) or a server with API keys opens it with a
// stream ticket, since EventSource sends no headers. Whenever the stream is absent or
// broken (it is retried with backoff) the page polls: one request (GET /tasks, whose
// items carry everything a card shows) every 700 ms, and the stats when a status moved.

import { API, ApiError, api, isKeyRefusal, session, streamNeedsTicket } from "./api.js";
import { mergeInto, mergeLines, removeTask, renderList, renderOutlook, upsert } from "./cards.js";
import { $, el, fmtDuration, fmtTime, messageOf, toast } from "./dom.js";
import { askForKey, askingForKey, onNewKey } from "./keys.js";
import { STATUSES, TERMINAL, live, markDirty, setWaker, tasks, wake } from "./state.js";

export const POLL_MS = 700;
const STREAM_RESYNC_MS = 15000;
/** With the stream on and tasks waiting or running: the list is read this often for their
 * places in line and estimates (events do not carry them). */
const STREAM_RESYNC_ACTIVE_MS = 3000;
const HIDDEN_POLL_MS = 5000;
/** The stats follow status changes; without any, they are read again this often. */
const STATS_EVERY_MS = 10000;
const CLEANUP_EVERY_MS = 15000;
const LIST_LIMIT = 200;

export async function fullSync() {
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
    const known = tasks.get(summary.id);
    if (!known || known.status !== summary.status) live.statsDirty = true;
    upsert(summary);
  }
  for (const id of [...tasks.keys()]) {
    if (!seen.has(id)) {
      removeTask(id);
      live.statsDirty = true;
    }
  }
  live.lastFull = Date.now();
  renderList();
}

export async function refreshStats() {
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

export async function refreshCleanup() {
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

/** @param {HTMLButtonElement} button */
export async function runCleanup(button) {
  button.disabled = true;
  try {
    const answer = await api("POST", "/tasks/cleanup/run");
    const r = answer.result ?? {};
    toast(`Cleanup removed ${r.removed ?? 0} task${r.removed === 1 ? "" : "s"}` +
      (r.durationMs !== undefined ? ` in ${fmtDuration(r.durationMs)}` : ""), "ok", $("#cleanup"));
  } catch (error) {
    toast(messageOf(error), "error", $("#cleanup"));
  } finally {
    button.disabled = false;
    live.cleanupDirty = true;
    markDirty();
  }
}

// ------------------------------------------------------------------ event stream

/** What the indicator in the top bar says: "live" only while the page's requests work. */
export function setLiveIndicator() {
  const box = $("#live");
  let mode;
  let text;
  if (live.locked) { mode = "locked"; text = "needs an API key"; }
  else if (live.offline) { mode = "offline"; text = "server unreachable, retrying…"; }
  else if (live.failing) { mode = "failing"; text = `not updating: ${live.failing}`; }
  else if (live.streaming) { mode = "stream"; text = "live · event stream"; }
  else if (live.lastFull === 0) { mode = "connecting"; text = "connecting…"; }
  else { mode = "polling"; text = `live · polling every ${POLL_MS / 1000} s`; }
  box.dataset.mode = mode;
  $("#live-text").textContent = text;
  box.title = live.failing ?? "";
}

export function closeStream() {
  if (live.es) live.es.close();
  live.es = null;
  live.streaming = false;
}

export async function connectStream() {
  if (typeof EventSource === "undefined") return;
  closeStream();
  const generation = live.generation;
  let url = `${API}/tasks/events`;
  const ticketed = streamNeedsTicket();
  // Marks the attempt: no second one starts while this one asks for its ticket.
  live.streamRetryAt = Date.now() + 60000;
  if (ticketed) {
    try {
      const { ticket } = await api("POST", "/session/ticket");
      url += `?ticket=${encodeURIComponent(ticket)}`;
    } catch (error) {
      streamFailed(true);
      if (!(error instanceof ApiError) || error.status === 0 || isKeyRefusal(error)) return;
      throw error;
    }
  }
  if (generation !== live.generation || live.es) return;
  const es = new EventSource(url);
  live.es = es;
  es.addEventListener("open", () => {
    if (live.es !== es) return;
    live.streaming = true;
    live.streamFailures = 0;
    markDirty(); // resync once: events only tell what changes from now on
    setLiveIndicator();
  });
  for (const name of ["snapshot", "transition", "progress", "removed", "log", "message"]) {
    es.addEventListener(name, (event) => { if (live.es === es) onStreamEvent(name, /** @type {MessageEvent} */ (event)); });
  }
  es.addEventListener("error", () => {
    if (live.es !== es) return;
    live.streaming = false;
    // A ticket serves one connection: a ticketed stream reconnects itself with a new one.
    if (es.readyState === EventSource.CLOSED || ticketed) {
      es.close();
      live.es = null;
      streamFailed(ticketed);
    }
    setLiveIndicator();
    wake();
  });
  live.streamRetryAt = 0;
}

/** The stream is absent, refused or broken: poll, and try it again later. */
/** @param {boolean} ticketed */
function streamFailed(ticketed) {
  live.streamFailures += 1;
  const backoff = Math.min(60000, 5000 * 2 ** Math.min(live.streamFailures, 4));
  live.streamRetryAt = Date.now() + (ticketed && live.streamFailures === 1 ? 1000 : backoff);
}

/**
 * @param {string} name
 * @param {MessageEvent} event
 */
export function onStreamEvent(name, event) {
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
    if (type === "log") {
      // Log lines: kept with the task (each once, by its number), the latest on its card.
      task.logs = mergeLines(task.logs, Array.isArray(item.lines) ? item.lines : [item]);
      changed = true;
      continue;
    }
    const previousStatus = task.status;
    mergeInto(task, item);
    if (task.status !== previousStatus) {
      live.statsDirty = true;
      task.queuePosition = null; // where it stands now comes with the list
      task.eta = null;
      if (task.status === "pending" || task.status === "running") task.error = item.error ?? null;
      // Terminal: fetch completedAt and friends; otherwise places in line and estimates moved.
      if (TERMINAL.has(task.status ?? "") || hasActiveTasks()) live.dirty = true;
    }
    changed = true;
  }
  if (changed) renderList();
  if (live.dirty || live.statsDirty) wake();
}

/** @type {ReturnType<typeof setTimeout> | null} */
let wakeTimer = null;
let loopRunning = false;

/** Run the loop soon: the `wake()` of state.js. */
function wakeLoop() {
  if (wakeTimer !== null) {
    clearTimeout(wakeTimer);
    wakeTimer = null;
  }
  if (!loopRunning) wakeTimer = setTimeout(loop, 30);
}

/** A request failed: say so in the indicator; ask for a key when that is what is missing. */
/** @param {unknown} error */
function onSyncError(error) {
  if (isKeyRefusal(error)) {
    live.locked = true;
    closeStream();
    askForKey();
  } else if (error instanceof ApiError && error.status === 0) {
    live.offline = true;
  } else {
    live.failing = messageOf(error);
    console.warn("dashboard sync failed:", error);
  }
  setLiveIndicator();
}

/** One round of syncing; it schedules the next one itself. */
export async function loop() {
  wakeTimer = null;
  if (loopRunning) return;
  loopRunning = true;
  let failed = false;
  try {
    if (live.locked || askingForKey()) return; // nothing works without the key
    const now = Date.now();
    if (!live.es && now >= live.streamRetryAt) connectStream().catch(onSyncError);
    const every = document.hidden ? HIDDEN_POLL_MS
      : !live.streaming ? POLL_MS : hasActiveTasks() ? STREAM_RESYNC_ACTIVE_MS : STREAM_RESYNC_MS;
    if (live.dirty || now - live.lastFull >= every) await fullSync();
    if (live.statsDirty || now - live.lastStats >= STATS_EVERY_MS) await refreshStats();
    if (live.cleanupDirty || now - live.lastCleanup >= CLEANUP_EVERY_MS) await refreshCleanup();
    if (live.offline || live.failing) {
      live.offline = false;
      live.failing = null;
    }
    setLiveIndicator();
  } catch (error) {
    failed = true;
    onSyncError(error);
  } finally {
    loopRunning = false;
    const delay = live.dirty || live.statsDirty ? 150 : live.streaming ? 1000 : POLL_MS;
    if (wakeTimer === null) wakeTimer = setTimeout(loop, failed ? 1000 : delay);
  }
}

/** Whether a task shown waits or runs (its place in line and estimate move). */
function hasActiveTasks() {
  for (const task of tasks.values()) if (task.status === "pending" || task.status === "running") return true;
  return false;
}

// Count the estimates down between list reads.
setInterval(() => {
  for (const task of tasks.values()) if (task.eta || task.queuePosition || task.scheduledAt) renderOutlook(task);
}, 1000);

onNewKey(() => {
  live.locked = false;
  live.streamRetryAt = 0;
  live.streamFailures = 0;
  live.cleanupDirty = true;
  markDirty();
});
setWaker(wakeLoop);
