// @ts-check
// Small DOM and formatting helpers shared by the dashboard's modules.
//
// All user-provided text goes into the DOM through textContent / attributes only.

/**
 * Create an element: el("div", {class: "x", "data-id": id}, child, "text"...).
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Record<string, unknown>} [attrs]
 * @param {...(Node | string | number | null | undefined | false)} children
 * @returns {HTMLElementTagNameMap[K]}
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), /** @type {EventListener} */ (value));
    } else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/**
 * The element matching `selector` (the page's own: it is always there).
 * @param {string} selector
 * @returns {HTMLElement}
 */
export function $(selector) {
  const node = document.querySelector(selector);
  if (!(node instanceof HTMLElement)) throw new Error(`${selector} is missing from the page`);
  return node;
}

/** @param {number | null | undefined} ms */
export function fmtTime(ms) {
  if (!ms) return "";
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

/** @param {number | null | undefined} ms */
export function fmtDuration(ms) {
  if (ms === null || ms === undefined || ms < 0) return "";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  const minutes = Math.floor(ms / 60000);
  return `${minutes} min ${Math.round((ms % 60000) / 1000)} s`;
}

/** @param {unknown} progress */
export function pct(progress) {
  const n = Number(progress);
  return Number.isFinite(n) ? Math.max(0, Math.min(100, Math.round(n))) : 0;
}

/**
 * Show a short message. Messages sit in the page's flow, never over it, so they cover no
 * control: right after `near` (the form, card or panel the message is about), or at the
 * top of the page when it is about nothing in particular. They go by themselves.
 * @param {string} message
 * @param {"info" | "ok" | "error"} [kind]
 * @param {Element | null} [near]
 */
export function toast(message, kind = "info", near = null) {
  const item = el("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" },
    el("span", { class: "msg", text: message }),
    el("button", { type: "button", "aria-label": "Dismiss", text: "×", onclick: () => item.remove() }));
  if (near) {
    // One message per place: a newer one replaces it.
    const previous = near.nextElementSibling;
    if (previous?.classList.contains("toast")) previous.remove();
    near.after(item);
  } else {
    const box = $("#toasts");
    box.append(item);
    while (box.children.length > 3) box.firstElementChild?.remove();
  }
  setTimeout(() => item.remove(), kind === "error" ? 9000 : 4500);
}

/**
 * Text with `backtick` spans as <code> nodes (built as nodes, never parsed as HTML).
 * @param {unknown} text
 */
export function withCode(text) {
  return String(text).split("`").map((part, index) => (index % 2 ? el("code", { text: part }) : part));
}

/**
 * The message of something thrown.
 * @param {unknown} error
 */
export function messageOf(error) {
  return error instanceof Error ? error.message : String(error);
}

/** @param {number} n */
function ordinal(n) {
  const tens = n % 100;
  const suffix = tens >= 11 && tens <= 13 ? "th" : ["th", "st", "nd", "rd"][n % 10] ?? "th";
  return `${n}${suffix}`;
}

/** @param {number} ms */
function about(ms) {
  if (ms < 60_000) return `about ${Math.round(ms / 1000)} s`;
  if (ms < 3_600_000) return `about ${Math.round(ms / 60_000)} min`;
  return `about ${Math.round(ms / 3_600_000)} h`;
}

/**
 * Where a task stands, for a person (as the client module's `outlookText`): "3rd in line ·
 * starts in about 12 s", "about 8 s left", "starts at 14:05:00, in about 3 min" (a delayed
 * start), why it waits when something else holds it up, or "" when nothing is known.
 * @param {{status?: string, queuePosition?: number | null, scheduledAt?: number | null,
 *   waitingReason?: string | null, eta?: {startsAt: number | null, finishesAt: number} | null}} task
 * @param {number} [now]
 */
export function outlookText(task, now = Date.now()) {
  const parts = [];
  const pending = task.status === "pending";
  const waitsForItsTime = pending && !!task.scheduledAt && task.scheduledAt > now;
  if (waitsForItsTime) {
    const wait = /** @type {number} */ (task.scheduledAt) - now;
    parts.push(`starts at ${fmtTime(task.scheduledAt)}${wait < 1000 ? "" : `, in ${about(wait)}`}`);
  } else if (pending && task.queuePosition) {
    parts.push(`${ordinal(task.queuePosition)} in line`);
  }
  const eta = task.eta;
  if (eta && pending && eta.startsAt !== null && !waitsForItsTime) {
    const wait = eta.startsAt - now;
    parts.push(wait < 1000 ? "starting any moment now" : `starts in ${about(wait)}`);
  } else if (eta && task.status === "running") {
    const left = eta.finishesAt - now;
    parts.push(left < 1000 ? "finishing any moment now" : `${about(left)} left`);
  }
  if (pending && task.waitingReason) parts.push(task.waitingReason);
  return parts.join(" · ");
}

/**
 * One log line as text: its time, its message and its data (cut short).
 * @param {{at: number, message: string, data?: unknown}} line
 */
export function logText(line) {
  let data = line.data === undefined || line.data === null ? "" : `  ${JSON.stringify(line.data)}`;
  if (data.length > 160) data = `${data.slice(0, 159)}…`;
  return `${fmtTime(line.at)}  ${line.message}${data}`;
}
