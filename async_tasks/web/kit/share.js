// @ts-check
// The share page: one task, read-only, followed live with the client module (no session,
// no API key: the share token in the page's URL is the credential).

import { outlookText, watchShared } from "./client.js";

/** @typedef {import("./client").TaskUpdate} TaskUpdate */

/** @param {string} id */
function byId(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`#${id} is missing from the page`);
  return node;
}

/** @param {string} name */
function meta(name) {
  return document.querySelector(`meta[name="${name}"]`)?.getAttribute("content") ?? "";
}

/** @param {number} ms */
function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/**
 * @param {string} mode
 * @param {string} text
 */
function setLive(mode, text) {
  byId("live").dataset.mode = mode;
  byId("live-text").textContent = text;
}

/** @type {TaskUpdate | null} */
let shown = null;

/** The task's place in line and estimate, counted down between updates. */
function renderOutlook() {
  const text = shown ? outlookText(shown) : "";
  const node = byId("outlook");
  node.hidden = !text;
  if (node.textContent !== text) node.textContent = text;
}

/** @param {TaskUpdate} task */
function render(task) {
  shown = task;
  renderOutlook();
  const progress = Math.max(0, Math.min(100, Math.round(task.progress)));
  byId("task").dataset.status = task.status;
  byId("task-name").textContent = task.name || task.executor || "Task";
  document.title = `${task.name || "Task"} · ${task.status} · async-tasks`;
  byId("badge").textContent = task.status;
  byId("badge").dataset.status = task.status;
  byId("executor").textContent = task.executor ?? "";
  byId("fill").style.width = `${progress}%`;
  byId("bar").setAttribute("aria-valuenow", String(progress));
  byId("pct").textContent = `${progress}%`;
  byId("step-name").textContent = task.currentStep ?? (task.status === "pending" ? "Waiting to start" : "");
  byId("step-desc").textContent = task.currentStepDescription ?? "";
  const error = byId("error");
  error.hidden = !task.error;
  error.textContent = task.error ?? "";
  const hasResult = task.status === "completed" && task.result !== null && task.result !== undefined;
  byId("result-box").hidden = !hasResult;
  byId("result").textContent = hasResult ? JSON.stringify(task.result, null, 2).slice(0, 4000) : "";
  const logs = task.logs ?? [];
  byId("logs-box").hidden = logs.length === 0;
  byId("logs").replaceChildren(...logs.slice(-50).map((line) => {
    const item = document.createElement("li");
    const data = line.data === undefined ? "" : `  ${JSON.stringify(line.data)}`;
    item.textContent = `${clock(line.at)}  ${line.message}${data.length > 200 ? `${data.slice(0, 199)}…` : data}`;
    return item;
  }));
  const box = byId("logs");
  box.scrollTop = box.scrollHeight; // the newest line in view
}

setInterval(renderOutlook, 1000);

const token = meta("share-token");
const apiPath = meta("api-base") || "/api/v1";
const link = `${location.origin}/share/${token}`;
fetch(`${apiPath}/shared/${encodeURIComponent(token)}`, { credentials: "omit", cache: "no-store" })
  .then(async (response) => {
    if (response.ok) {
      const { expiresAt } = await response.json();
      byId("expires").textContent = `This link works until ${clock(expiresAt)}.`;
    }
  })
  .catch(() => {});
watchShared(link, render, {
  apiPath,
  onTransport: (name) => setLive(name === "polling" ? "polling" : "stream", name === "polling" ? "live · polling" : "live"),
  onEnd: (_task, reason) => setLive("ended", reason === "removed" ? "the task was deleted" : "finished"),
  onError: (error) => {
    setLive("offline", "not available");
    byId("task-name").textContent = error.status === 404 ? "This task is gone" : "This link does not work";
    byId("error").hidden = false;
    byId("error").textContent = error.message;
  },
});
