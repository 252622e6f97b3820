// @ts-check
// Task cards: one <li> per task, updated in place; their buttons; the status filter.

import { api } from "./api.js";
import { $, el, fmtDuration, fmtTime, logText, messageOf, outlookText, pct, toast } from "./dom.js";
import { MAX_LOG_LINES, STATUSES, TERMINAL, live, markDirty, tasks, view } from "./state.js";

/** @typedef {import("./state.js").TaskRecord} TaskRecord */

/**
 * @param {TaskRecord} task
 * @returns {Record<string, HTMLElement>}
 */
export function createCard(task) {
  /** @type {Record<string, HTMLElement>} */
  const refs = {};
  refs.badge = el("span", { class: "badge" });
  refs.deadLetter = el("span", { class: "dead-letter", hidden: true, text: "retries spent" });
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
  refs.share = el("button", { type: "button", class: "btn-share", "data-action": "share", text: "Share",
    title: "A link to a read-only page following this task, for a phone or a colleague" });
  refs.details = el("pre", { class: "details", hidden: true });
  refs.outlook = el("p", { class: "task-outlook", hidden: true });
  // The log: its latest line in the summary; opened, every line known (the whole log is
  // read the first time it opens, then follows the stream).
  refs.logCount = el("span", { class: "log-count" });
  refs.logLatest = el("span", { class: "log-latest" });
  refs.log = el("ol", { class: "log-lines", "aria-label": "Log lines" });
  refs.logBox = el("details", { class: "task-log", hidden: true },
    el("summary", {}, refs.logCount, refs.logLatest), refs.log);
  refs.logBox.addEventListener("toggle", () => onLogToggle(task.id));
  refs.root = el("li", { class: "task enter", "data-task-id": task.id },
    el("div", { class: "task-head" }, refs.badge, refs.deadLetter, refs.name, refs.pct),
    el("div", { class: "task-meta" }, refs.executor, refs.id, refs.when, refs.duration),
    refs.bar,
    refs.outlook,
    el("div", { class: "task-foot" }, refs.step,
      el("div", { class: "task-actions" }, refs.cancel, refs.retry, refs.delete, refs.share, refs.detailsBtn)),
    refs.error,
    refs.logBox,
    refs.details);
  // Animate the first appearance only: moving the node later must not replay it.
  refs.root.addEventListener("animationend", () => refs.root.classList.remove("enter"), { once: true });
  for (const button of [refs.cancel, refs.retry, refs.delete, refs.share, refs.detailsBtn]) {
    button.addEventListener("click", () => onAction(task.id, button.dataset.action ?? "", /** @type {HTMLButtonElement} */ (button)));
  }
  return refs;
}

/** @param {TaskRecord} task */
export function renderTask(task) {
  if (!task.refs) task.refs = createCard(task);
  const r = task.refs;
  const status = task.status && STATUSES.includes(task.status) ? task.status : "pending";
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
  // Dead-lettered: the last automatic retry failed too; it runs again only if retried by hand.
  const dead = status === "failed" && task.deadLettered === true;
  r.deadLetter.hidden = !dead;
  r.deadLetter.title = dead ? deadLetterNote(task) : "";
  renderLog(task);
  renderOutlook(task);
  r.root.hidden = view.filter !== "all" && view.filter !== status;
}

/**
 * The card's log: how many lines the task wrote and its latest one; opened, every line known.
 * @param {TaskRecord} task
 */
function renderLog(task) {
  const r = /** @type {Record<string, HTMLElement>} */ (task.refs);
  const lines = task.logs ?? [];
  r.logBox.hidden = lines.length === 0;
  if (!lines.length) return;
  const last = lines[lines.length - 1];
  const written = Math.max(last.n || 0, lines.length);
  r.logCount.textContent = `Log · ${written} line${written === 1 ? "" : "s"}`;
  r.logLatest.textContent = last.message;
  if (!(/** @type {HTMLDetailsElement} */ (r.logBox)).open) return;
  if (r.log.childElementCount !== lines.length || r.log.lastElementChild?.getAttribute("data-n") !== String(last.n)) {
    r.log.replaceChildren(...lines.map((line) => el("li", { "data-n": line.n, text: logText(line) })));
    r.log.scrollTop = r.log.scrollHeight;
  }
}

/**
 * The task's place in line and estimate ("3rd in line · starts in about 12 s"), counted
 * down every second by the sync loop.
 * @param {TaskRecord} task
 */
export function renderOutlook(task) {
  const r = task.refs;
  if (!r) return;
  const text = outlookText(task);
  r.outlook.hidden = !text;
  if (r.outlook.textContent !== text) r.outlook.textContent = text;
}

/**
 * A card's log was opened or closed: the first opening reads the whole log.
 * @param {string} id
 */
async function onLogToggle(id) {
  const task = tasks.get(id);
  if (!task?.refs) return;
  renderLog(task);
  if (!(/** @type {HTMLDetailsElement} */ (task.refs.logBox)).open || task.logsFetched) return;
  try {
    const answer = await api("GET", `/tasks/${encodeURIComponent(id)}`);
    task.logsFetched = true;
    mergeInto(task, { logs: answer.task?.logs ?? [] });
    renderLog(task);
  } catch (error) {
    toast(messageOf(error), "error", task.refs.logBox);
  }
}

/**
 * `known` with the lines of `incoming` it lacks (by their number `n`), in order: a line
 * heard twice (a list item's latest lines, then a `log` event) is kept once.
 * @param {import("./state.js").LogLine[] | undefined} known
 * @param {unknown} incoming
 * @returns {import("./state.js").LogLine[]}
 */
export function mergeLines(known, incoming) {
  const lines = (Array.isArray(incoming) ? incoming : [])
    .filter((line) => line && typeof line.message === "string")
    .map((line) => ({ n: Number(line.n) || 0, at: Number(line.at) || Date.now(), message: String(line.message),
      data: line.data ?? undefined }));
  const before = known ?? [];
  const seen = new Set(before.map((line) => line.n));
  const fresh = lines.filter((line) => !line.n || !seen.has(line.n));
  if (!fresh.length) return before;
  return [...before, ...fresh].sort((a, b) => (a.n || Infinity) - (b.n || Infinity)).slice(-MAX_LOG_LINES);
}

/** @param {TaskRecord} task */
function deadLetterNote(task) {
  const retries = Number(task.maxRetries) > 0 ? `all ${task.maxRetries} automatic ${task.maxRetries === 1 ? "retry" : "retries"}` : "its automatic retries";
  return `Dead-lettered: ${retries} failed too, so it will not run again by itself. Retry runs it again; ` +
    "GET /tasks?deadLetter=true lists such tasks.";
}

/** @param {Record<string, any>} data */
export function upsert(data) {
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

/** What the page keeps of a list item or an event: what a card shows (and `logs`, `eta`). */
export const FIELDS = /** @type {const} */ (["name", "executor", "status", "progress", "createdAt", "completedAt",
  "startedAt", "currentStep", "currentStepDescription", "error", "attempts", "deadLettered", "maxRetries",
  "queuePosition", "scheduledAt", "waitingReason"]);

/**
 * Take what a list item, a task or an event says of the task: its fields, its log lines
 * (merged with those known, by number) and its estimate (on this browser's clock).
 * @param {TaskRecord} task
 * @param {Record<string, any>} data
 */
export function mergeInto(task, data) {
  /** @type {Record<string, unknown>} */
  const target = task;
  for (const key of FIELDS) if (key in data && data[key] !== undefined) target[key] = data[key];
  if (Array.isArray(data.logs)) task.logs = mergeLines(task.logs, data.logs);
  if ("eta" in data) {
    const eta = data.eta;
    const now = Date.now();
    task.eta = eta && Number.isFinite(eta.finishesInMs) ? {
      startsAt: eta.startsInMs === null || eta.startsInMs === undefined ? null : now + eta.startsInMs,
      finishesAt: now + eta.finishesInMs,
      typicalMs: eta.typicalMs ?? null,
    } : null;
  }
}

/** @param {string} id */
export function removeTask(id) {
  const task = tasks.get(id);
  if (!task) return;
  task.refs?.root?.remove();
  tasks.delete(id);
}

export function renderList() {
  const list = $("#tasks");
  const ordered = [...tasks.values()].sort((a, b) => (b.createdAt ?? 0) - (a.createdAt ?? 0));
  /** @type {ChildNode | null} */
  let previous = null;
  for (const task of ordered) {
    renderTask(task);
    const node = /** @type {Record<string, HTMLElement>} */ (task.refs).root;
    /** @type {ChildNode | null} */
    const expected = previous ? previous.nextSibling : list.firstChild;
    if (node !== expected) list.insertBefore(node, expected);
    previous = node;
  }
  const visible = ordered.filter((t) => view.filter === "all" || t.status === view.filter).length;
  $("#empty").hidden = visible > 0;
  $("#empty").textContent = tasks.size > 0 ? `No ${view.filter} tasks.`
    : live.formsReady ? "No tasks in this session yet. Create one with the form." : "No tasks in this session yet.";
  $("#task-count").textContent = live.total > tasks.size ? `${tasks.size} of ${live.total}` : `(${tasks.size})`;
}

export function renderFilters() {
  const box = $("#filters");
  box.replaceChildren();
  for (const name of ["all", ...STATUSES]) {
    box.append(el("button", {
      type: "button", class: "filter", "aria-pressed": String(view.filter === name), "data-filter": name, text: name,
      onclick: () => { view.filter = name; renderFilters(); renderList(); },
    }));
  }
}

/**
 * A card's button. What it did shows on the card itself (its badge, or a message inside it).
 * @param {string} id
 * @param {string} action
 * @param {HTMLButtonElement} button
 */
export async function onAction(id, action, button) {
  const task = tasks.get(id);
  if (!task?.refs) return;
  if (action === "details") return toggleDetails(task);
  if (action === "share") return shareTask(task, button);
  const generation = live.generation;
  const foot = task.refs.root.querySelector(".task-foot");
  button.disabled = true;
  try {
    if (action === "delete") {
      await api("DELETE", `/tasks/${encodeURIComponent(id)}`);
      if (generation === live.generation) removeTask(id);
    } else {
      const answer = await api("POST", `/tasks/${encodeURIComponent(id)}/${action}`);
      if (generation === live.generation && answer?.task) {
        mergeInto(task, { ...answer.task, queuePosition: answer.queuePosition ?? null, eta: answer.eta ?? null });
      }
    }
  } catch (error) {
    toast(messageOf(error), "error", foot);
  } finally {
    button.disabled = false;
    renderList();
    markDirty();
  }
}

/**
 * Make a share link and show it on the card, ready to open or copy.
 * @param {TaskRecord} task
 * @param {HTMLButtonElement} button
 */
async function shareTask(task, button) {
  const foot = /** @type {Record<string, HTMLElement>} */ (task.refs).root.querySelector(".task-foot");
  button.disabled = true;
  try {
    const { url, expiresAt } = await api("POST", `/tasks/${encodeURIComponent(task.id)}/share`);
    const line = el("p", { class: "share-line" },
      el("a", { href: url, target: "_blank", rel: "noopener", class: "share-link", text: url }),
      ` · read-only, until ${fmtTime(expiresAt)}`);
    const previous = foot?.parentElement?.querySelector(".share-line");
    if (previous) previous.replaceWith(line);
    else foot?.after(line);
  } catch (error) {
    toast(messageOf(error), "error", foot);
  } finally {
    button.disabled = false;
  }
}

/**
 * One history entry as a line; the first one has no previous status: the task was created.
 * @param {{at: number, status: string, previous?: string | null, reason?: string | null}} entry
 */
function historyLine(entry) {
  const change = `${entry.previous ?? "created"} → ${entry.status}`;
  const reason = entry.reason && !(entry.previous == null && entry.reason === "created") ? `  (${entry.reason})` : "";
  return `${fmtTime(entry.at)}  ${change}${reason}`;
}

/**
 * Show a task's card: after starting a task from a long form, its card may be out of view.
 * @param {string} id
 */
export function revealTask(id) {
  const task = tasks.get(id);
  if (!task?.refs) return;
  if (task.refs.root.hidden) { // filtered out: show every task again
    view.filter = "all";
    renderFilters();
    renderList();
  }
  const smooth = !window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  task.refs.root.scrollIntoView({ block: "nearest", behavior: smooth ? "smooth" : "auto" });
}

/** @param {TaskRecord} task */
export async function toggleDetails(task) {
  const r = /** @type {Record<string, HTMLElement>} */ (task.refs);
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
      deadLettered: t.deadLettered || undefined,
      params: t.params, result: t.result, error: t.error ?? undefined,
      history: t.history?.map(historyLine),
    };
    r.details.textContent = JSON.stringify(shown, null, 2);
    r.details.hidden = false;
    r.detailsBtn.textContent = "Hide details";
  } catch (error) {
    toast(messageOf(error), "error", r.root.querySelector(".task-foot"));
  }
}
