// Keeping the page live: the session event stream when it can, polling otherwise.
//
// In cookie mode the page subscribes to the session event stream (EventSource on
// /tasks/events). EventSource cannot send headers, so tab mode polls GET /tasks plus
// /tasks/{id}/status every 700 ms; so does cookie mode whenever the stream is absent
// or broken (it is retried with backoff).

import { API, ApiError, api, session } from "./api.js";
import { mergeInto, removeTask, renderList, upsert } from "./cards.js";
import { $, el, fmtDuration, fmtTime, toast } from "./dom.js";
import { STATUSES, TERMINAL, live, markDirty, setWaker, tasks, wake } from "./state.js";

export const POLL_MS = 700;
const STREAM_RESYNC_MS = 15000;
const HIDDEN_POLL_MS = 5000;
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
    upsert(summary);
  }
  for (const id of [...tasks.keys()]) if (!seen.has(id)) removeTask(id);
  // /status has the step description and the error: ask for it while a task is
  // active, and once more whenever a task reaches a new status. A failed task is
  // asked for whole, once: only the task itself says whether it is dead-lettered.
  const wanted = [...tasks.values()].filter((t) => !TERMINAL.has(t.status) || t.detailedStatus !== t.status);
  await Promise.all(wanted.slice(0, 50).map(async (task) => {
    const path = `/tasks/${encodeURIComponent(task.id)}`;
    const whole = task.status === "failed";
    try {
      const detail = whole ? (await api("GET", path)).task : await api("GET", `${path}/status`);
      if (generation !== live.generation) return;
      mergeInto(task, detail);
      if (task.status !== "failed") task.deadLettered = false;
      // A task that failed meanwhile is asked for again, whole, right away.
      const known = whole || detail.status !== "failed";
      task.detailedStatus = known ? detail.status : null;
      if (!known) live.dirty = true;
    } catch (error) {
      if (error.status === 404) removeTask(task.id);
    }
  }));
  if (generation !== live.generation) return;
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

export async function runCleanup(button) {
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

export function setLiveIndicator() {
  const box = $("#live");
  let mode;
  let text;
  if (live.offline) { mode = "offline"; text = "server unreachable, retrying…"; }
  else if (live.streaming) { mode = "stream"; text = "live · event stream"; }
  else { mode = "polling"; text = `live · polling every ${POLL_MS / 1000} s`; }
  box.dataset.mode = mode;
  $("#live-text").textContent = text;
}

export function closeStream() {
  if (live.es) live.es.close();
  live.es = null;
  live.streaming = false;
}

export function connectStream() {
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

/** One round of syncing; it schedules the next one itself. */
export async function loop() {
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

setWaker(wakeLoop);
