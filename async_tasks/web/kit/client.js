// @ts-check
// The async-tasks browser client: an ES module the server serves as /client.js (types in
// /client.d.ts). No build step, no dependency: a page on an allowed origin
// (CORS_ALLOW_ORIGINS) imports it as it is.
//
//   import { connect } from "http://localhost:3000/client.js";
//   const client = connect({ baseUrl: "http://localhost:3000" });
//   const task = await client.createTask("sample", { delayMs: 2000 });
//   const stop = client.watch(task.id, (t) => console.log(t.status, t.progress, t.currentStep));
//
// `watch` follows one task on the event stream (SSE), else the session WebSocket, else by
// polling. Every state carries its attempt and time (the stream's event id is
// `<attempt>-<at>`): a state older than the last one delivered, or the same one again (a
// reconnect starts with a snapshot), is never delivered, so a dropped connection costs
// nothing but the reconnect. Log lines carry their number in the task's log (`n`), so a
// line seen twice (in a reconnect's snapshot, then in an event) is kept once. Streams that
// need a session token or an API key open with a stream ticket (POST /session/ticket),
// since EventSource and WebSocket send no headers.

/** @typedef {import("./client").TaskStatus} TaskStatus */
/** @typedef {import("./client").TaskUpdate} TaskUpdate */
/** @typedef {import("./client").LogLine} LogLine */
/** @typedef {import("./client").WatchedEta} WatchedEta */
/** @typedef {import("./client").WatchOptions} WatchOptions */
/** @typedef {import("./client").Transport} Transport */
/** @typedef {import("./client").ConnectOptions} ConnectOptions */
/** @typedef {import("./client").Client} Client */
/** @typedef {import("./client").Task} Task */
/** @typedef {import("./client").TaskList} TaskList */
/** @typedef {import("./client").ShareLink} ShareLink */
/** @typedef {import("./client").CreateOptions} CreateOptions */
/** @typedef {import("./client").ListFilter} ListFilter */

/**
 * Where a watch reads from.
 * @typedef {object} Source
 * @property {() => Promise<string>} sseUrl
 * @property {boolean} withCredentials
 * @property {(() => Promise<string>) | null} wsUrl
 * @property {() => Promise<Record<string, any>>} fetchTask
 */

const DEFAULT_API_PATH = "/api/v1";
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const STATUSES = new Set(["pending", "running", ...TERMINAL]);
const ALL_TRANSPORTS = /** @type {Transport[]} */ (["sse", "websocket", "polling"]);
/** Log lines kept per watched task (the oldest go first). */
const MAX_LOG_LINES = 500;
/** Statuses after which no reconnect or poll can help. */
const FATAL = new Set([401, 403, 404, 410]);

export class ApiError extends Error {
  /**
   * @param {number} status
   * @param {string} code
   * @param {string} message
   * @param {unknown} [details]
   */
  constructor(status, code, message, details) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

/** The origin this module was loaded from: the server, when imported from it. */
function moduleOrigin() {
  try {
    return new URL(import.meta.url).origin;
  } catch {
    return "";
  }
}

/** @param {string} path */
function cleanPath(path) {
  const trimmed = path.replace(/\/+$/, "");
  return trimmed && !trimmed.startsWith("/") ? `/${trimmed}` : trimmed;
}

/**
 * The body of an answer, or the contract's error as an ApiError.
 * @param {Response} response
 * @returns {Promise<any>}
 */
async function readAnswer(response) {
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok || (data && data.success === false)) {
    const error = data && typeof data.error === "object" && data.error ? data.error : {};
    const message = typeof error.message === "string" && error.message
      ? error.message
      : `The server answered ${response.status}.`;
    throw new ApiError(response.status, error.code ?? `http_${response.status}`, message, error.details);
  }
  return data;
}

/**
 * `fetch`, with a network failure as an ApiError (status 0).
 * @param {string} url
 * @param {RequestInit} init
 */
async function send(url, init) {
  try {
    return await fetch(url, { cache: "no-store", ...init });
  } catch {
    throw new ApiError(0, "network_error", `Cannot reach the server at ${url.replace(/^(\w+:\/\/[^/]+).*$/, "$1")}.`);
  }
}

/** @param {number} n */
function ordinal(n) {
  const tens = n % 100;
  const suffix = tens >= 11 && tens <= 13 ? "th" : ["th", "st", "nd", "rd"][n % 10] ?? "th";
  return `${n}${suffix}`;
}

/** @param {number} ms */
function about(ms) {
  if (ms < 1000) return "any moment now";
  if (ms < 60_000) return `about ${Math.round(ms / 1000)} s`;
  if (ms < 3_600_000) return `about ${Math.round(ms / 60_000)} min`;
  return `about ${Math.round(ms / 3_600_000)} h`;
}

/**
 * Where a watched task stands, for a person: "3rd in line · starts in about 12 s", "about
 * 8 s left", or "" when nothing is known (a finished task, no estimate yet).
 * @param {TaskUpdate} task
 * @param {number} [now] this browser's clock (default: now)
 */
export function outlookText(task, now = Date.now()) {
  const parts = [];
  if (task.status === "pending" && task.queuePosition) parts.push(`${ordinal(task.queuePosition)} in line`);
  const eta = task.eta;
  if (eta && (task.status === "pending" || task.status === "running")) {
    if (task.status === "pending" && eta.startsAt !== null) {
      const wait = Math.max(0, eta.startsAt - now);
      parts.push(wait < 1000 ? "starting any moment now" : `starts in ${about(wait)}`);
    } else if (task.status === "running") {
      const left = Math.max(0, eta.finishesAt - now);
      parts.push(left < 1000 ? "finishing any moment now" : `${about(left)} left`);
    }
  }
  return parts.join(" · ");
}

/** @param {ConnectOptions} [options] @returns {Client} */
export function connect(options = {}) {
  const baseUrl = (options.baseUrl ?? moduleOrigin()).replace(/\/+$/, "");
  const api = baseUrl + cleanPath(options.apiPath ?? DEFAULT_API_PATH);
  let token = options.token ?? null;
  const apiKey = options.apiKey ?? null;

  /**
   * @param {string} method
   * @param {string} path
   * @param {unknown} [body]
   * @param {Record<string, string>} [extra]
   */
  async function request(method, path, body, extra) {
    /** @type {Record<string, string>} */
    const headers = { Accept: "application/json", ...extra };
    if (token) headers["X-Session-Token"] = token;
    if (apiKey) headers["X-API-Key"] = apiKey;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await send(api + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      // Without a token, the browser's session cookie (same site); with one, the header alone.
      credentials: token ? "omit" : "include",
    });
    // No token given and no cookie arrived (another site, or a first visit): the server
    // started a session for this call; keep it, or every call would start another.
    const issued = response.headers.get("X-Session-Token");
    if (issued && !token) token = issued;
    return readAnswer(response);
  }

  /** The URL of a stream, with a ticket when the session or key travels in headers. */
  /** @param {string} url */
  async function streamUrl(url) {
    if (!token && !apiKey) return url;
    const answer = await request("POST", "/session/ticket");
    return `${url}${url.includes("?") ? "&" : "?"}ticket=${encodeURIComponent(answer.ticket)}`;
  }

  /** @param {string} id */
  const taskPath = (id) => `/tasks/${encodeURIComponent(id)}`;

  return {
    baseUrl,
    get token() {
      return token;
    },
    async createTask(executor, params = {}, create = {}) {
      const { idempotencyKey, start = true, ...rest } = create;
      const extra = idempotencyKey ? { "Idempotency-Key": idempotencyKey } : undefined;
      const answer = await request("POST", "/tasks", { executor, params, start, ...rest }, extra);
      return answer.task;
    },
    async getTask(id) {
      return (await request("GET", taskPath(id))).task;
    },
    async list(filter = {}) {
      const query = new URLSearchParams();
      for (const [key, value] of Object.entries(filter)) if (value !== undefined) query.set(key, String(value));
      const search = query.toString();
      const answer = await request("GET", `/tasks${search ? `?${search}` : ""}`);
      return { tasks: answer.tasks, count: answer.count, total: answer.total };
    },
    async cancel(id) {
      return (await request("POST", `${taskPath(id)}/cancel`)).task;
    },
    async retry(id) {
      return (await request("POST", `${taskPath(id)}/retry`)).task;
    },
    async remove(id) {
      await request("DELETE", taskPath(id));
    },
    async share(id) {
      const answer = await request("POST", `${taskPath(id)}/share`);
      return { url: answer.url, expiresAt: answer.expiresAt, token: answer.token };
    },
    watch(id, onUpdate, watchOptions = {}) {
      /** @type {Source} */
      const source = {
        sseUrl: () => streamUrl(`${api}${taskPath(id)}/events`),
        withCredentials: !token,
        wsUrl: () => streamUrl(`${api.replace(/^http/, "ws")}/ws`),
        fetchTask: async () => {
          const answer = await request("GET", taskPath(id));
          return { ...answer.task, queuePosition: answer.queuePosition ?? null, eta: answer.eta ?? null };
        },
      };
      return follow(source, id, onUpdate, watchOptions);
    },
  };
}

/**
 * @param {string} link
 * @param {(task: TaskUpdate) => void} onUpdate
 * @param {import("./client").SharedWatchOptions} [options]
 */
export function watchShared(link, onUpdate, options = {}) {
  const at = link.lastIndexOf("/share/");
  const origin = at >= 0 ? new URL(link, location.href).origin : moduleOrigin();
  const token = at >= 0 ? link.slice(at + "/share/".length).split(/[?#/]/)[0] : link;
  const shared = `${origin}${cleanPath(options.apiPath ?? DEFAULT_API_PATH)}/shared/${encodeURIComponent(token)}`;
  /** @type {Source} */
  const source = {
    sseUrl: async () => `${shared}/events`,
    withCredentials: false,
    wsUrl: null,
    fetchTask: async () => {
      const answer = await readAnswer(await send(shared, { headers: { Accept: "application/json" }, credentials: "omit" }));
      return answer.task;
    },
  };
  // The id is learnt from the first answer: events are matched on it.
  return follow(source, null, onUpdate, options);
}

/**
 * Whether a task (as the API returns it) has settled: no automatic retry will move it on.
 * @param {Record<string, any>} task
 */
function settled(task) {
  if (!TERMINAL.has(task.status)) return false;
  if (task.status !== "failed") return true;
  return Boolean(task.deadLettered) || !(Number(task.autoRetries) < Number(task.maxRetries));
}

/**
 * A copy of a watched state for a callback (which may keep or change it).
 * @param {TaskUpdate} task
 * @returns {TaskUpdate}
 */
function copy(task) {
  const copied = { ...task };
  if (task.logs) copied.logs = [...task.logs];
  if (task.eta) copied.eta = { ...task.eta };
  return copied;
}

/**
 * The log lines in `incoming` (an array from the server) as `LogLine`s; those without a
 * message are skipped.
 * @param {unknown} incoming
 * @returns {LogLine[]}
 */
function linesOf(incoming) {
  if (!Array.isArray(incoming)) return [];
  return incoming.filter((line) => line && typeof line.message === "string").map((line) => {
    /** @type {LogLine} */
    const clean = { n: Number(line.n) || 0, at: Number(line.at) || Date.now(), message: line.message };
    if (line.data !== undefined && line.data !== null) clean.data = line.data;
    return clean;
  });
}

/**
 * `known` with the lines of `incoming` it lacks, in order of their number: a line seen
 * again (a reconnect's snapshot, then an event) is kept once. At most MAX_LOG_LINES, the
 * newest.
 * @param {LogLine[] | undefined} known
 * @param {LogLine[]} incoming
 * @returns {LogLine[] | undefined} undefined when nothing was new
 */
function mergeLogs(known, incoming) {
  const before = known ?? [];
  const seen = new Set(before.map((line) => line.n));
  const fresh = incoming.filter((line) => !line.n || !seen.has(line.n));
  if (!fresh.length) return undefined;
  const merged = [...before, ...fresh];
  if (fresh.some((line) => line.n) && merged.some((line, i) => i > 0 && line.n && merged[i - 1].n > line.n)) {
    merged.sort((a, b) => (a.n || Infinity) - (b.n || Infinity));
  }
  return merged.slice(-MAX_LOG_LINES);
}

/**
 * The server's estimate with the times it names on this browser's clock.
 * @param {unknown} raw
 * @returns {WatchedEta | null}
 */
function etaOf(raw) {
  if (!raw || typeof raw !== "object") return null;
  const value = /** @type {Record<string, any>} */ (raw);
  const finishesInMs = Number(value.finishesInMs);
  if (!Number.isFinite(finishesInMs)) return null;
  const now = Date.now();
  const startsInMs = value.startsInMs === null || value.startsInMs === undefined ? null : Number(value.startsInMs);
  return {
    startsInMs,
    finishesInMs,
    typicalMs: value.typicalMs ?? null,
    samples: Number(value.samples) || 0,
    startsAt: startsInMs === null ? null : now + startsInMs,
    finishesAt: now + finishesInMs,
  };
}

/**
 * Whether two estimates differ by a second or more (or one is missing).
 * @param {WatchedEta | null} a
 * @param {WatchedEta | null} b
 */
function etaMoved(a, b) {
  if (!a || !b) return a !== b;
  const far = (/** @type {number | null} */ x, /** @type {number | null} */ y) =>
    (x === null) !== (y === null) || (x !== null && y !== null && Math.abs(x - y) >= 1000);
  return far(a.startsAt, b.startsAt) || far(a.finishesAt, b.finishesAt);
}

/** @param {string} text */
function parse(text) {
  try {
    const value = JSON.parse(text);
    return value && typeof value === "object" ? value : null;
  } catch {
    return null;
  }
}

/**
 * What tells two watched states apart (besides the estimate, compared on its own).
 * @param {TaskUpdate} task
 */
function fingerprintOf(task) {
  return JSON.stringify([task.status, task.progress, task.currentStep, task.currentStepDescription, task.error,
    task.attempt, task.at, task.logs?.at(-1)?.n ?? task.logs?.length ?? 0, task.queuePosition]);
}

/**
 * The engine of `watch` and `watchShared`.
 * @param {Source} source
 * @param {string | null} taskId null: whichever task the source names
 * @param {(task: TaskUpdate) => void} onUpdate
 * @param {WatchOptions} options
 * @returns {() => void}
 */
function follow(source, taskId, onUpdate, options) {
  const pollMs = Math.max(100, options.pollIntervalMs ?? 700);
  const transports = (options.transports ?? ALL_TRANSPORTS).filter((name) =>
    name === "sse" ? typeof EventSource !== "undefined"
      : name === "websocket" ? typeof WebSocket !== "undefined" && source.wsUrl !== null
        : name === "polling");
  if (!transports.includes("polling")) transports.push("polling");
  let id = taskId;
  /** @type {TaskUpdate | null} */
  let current = null;
  let fingerprint = "";
  let stopped = false;
  let index = -1;
  let failures = 0;
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  let close = () => {};

  const stop = () => {
    stopped = true;
    clearTimeout(timer);
    close();
  };
  /** @param {TaskStatus | "removed"} reason */
  const finish = (reason) => {
    if (stopped) return;
    stop();
    options.onEnd?.(current && copy(current), reason);
  };
  /** @param {unknown} error */
  const fail = (error) => {
    if (stopped) return;
    stop();
    options.onError?.(error instanceof ApiError ? error : new ApiError(0, "watch_failed", String(error)));
  };

  /** Deliver a state (an event's data or a task) unless it is one already delivered or older. */
  /** @param {Record<string, any>} data */
  function accept(data) {
    const dataId = data.taskId ?? data.id;
    if (id === null && typeof dataId === "string") id = dataId;
    if (stopped || dataId !== id || !STATUSES.has(data.status)) return;
    const attempt = Number(data.attempt ?? data.attempts ?? 0);
    const at = Number(data.at ?? data.updatedAt ?? 0);
    const progress = Number(data.progress ?? 0);
    if (current && (attempt < current.attempt || (attempt === current.attempt
      && (at < current.at || progress < current.progress)))) return; // older than what was delivered
    const sameStatus = current !== null && current.status === data.status && current.attempt === attempt;
    /** @type {TaskUpdate} */
    const next = {
      id: /** @type {string} */ (id),
      name: data.name ?? current?.name ?? null,
      executor: data.executor || current?.executor || null,
      status: /** @type {TaskStatus} */ (data.status),
      progress,
      currentStep: data.currentStep ?? null,
      currentStepDescription: data.currentStepDescription ?? null,
      error: data.error ?? null,
      result: data.status === "completed" ? data.result ?? null : null,
      attempt,
      at,
      // A task read whole says where it stands; an event keeps what was known while the
      // status stays (`eta` events bring news), and a new status forgets it.
      queuePosition: "queuePosition" in data ? data.queuePosition ?? null : sameStatus ? current?.queuePosition ?? null : null,
      eta: "eta" in data ? etaOf(data.eta) : sameStatus ? current?.eta ?? null : null,
    };
    const logs = mergeLogs(current?.logs, linesOf(data.logs)) ?? current?.logs;
    if (logs) next.logs = logs;
    if (data.logsDropped !== undefined || current?.logsDropped !== undefined) {
      next.logsDropped = Number(data.logsDropped ?? current?.logsDropped) || 0;
    }
    const key = fingerprintOf(next);
    if (key === fingerprint && !etaMoved(current?.eta ?? null, next.eta)) return; // nothing new (a reconnect's snapshot)
    fingerprint = key;
    current = next;
    onUpdate(copy(next));
  }

  /** A `log` event: its lines join the task's logs (those already there are kept once). */
  /** @param {Record<string, any>} data */
  function acceptLog(data) {
    if (stopped || !current || (data.taskId ?? data.id) !== id) return;
    const logs = mergeLogs(current.logs, linesOf(Array.isArray(data.lines) ? data.lines : [data]));
    if (!logs) return;
    const next = { ...current, logs };
    if (data.logsDropped !== undefined) next.logsDropped = Number(data.logsDropped) || 0;
    current = next;
    fingerprint = fingerprintOf(next);
    onUpdate(copy(next));
  }

  /** An `eta` event: where the task stands in its line, and when it should start and finish. */
  /** @param {Record<string, any>} data */
  function acceptEta(data) {
    if (stopped || !current || (data.taskId ?? data.id) !== id) return;
    if (data.status !== current.status || Number(data.attempt ?? 0) !== current.attempt) return; // its state is not ours yet
    const queuePosition = data.queuePosition ?? null;
    const eta = etaOf(data.eta);
    if (queuePosition === current.queuePosition && !etaMoved(current.eta, eta)) return;
    const next = { ...current, queuePosition, eta };
    current = next;
    fingerprint = fingerprintOf(next);
    onUpdate(copy(next));
  }

  /**
   * Read the task once: deliver it, end if it has settled, stop if it cannot be read.
   * @returns {Promise<boolean>} whether watching goes on
   */
  async function check() {
    try {
      const task = await source.fetchTask();
      accept(task);
      if (settled(task)) finish(task.status);
    } catch (error) {
      if (error instanceof ApiError && FATAL.has(error.status)) fail(error);
    }
    return !stopped;
  }

  /** The transport failed or dropped: check the task, then open it again or move to the next. */
  /** @param {boolean} opened */
  async function dropped(opened) {
    close();
    close = () => {};
    if (stopped) return;
    failures = opened ? 0 : failures + 1;
    if (!(await check())) return;
    if (failures >= 2) {
      failures = 0;
      openNext();
      return;
    }
    timer = setTimeout(() => open(transports[index]), opened ? 100 : 250 * failures);
  }

  function openNext() {
    index = Math.min(index + 1, transports.length - 1);
    open(transports[index]);
  }

  /** @param {Transport} name */
  function announce(name) {
    if (!stopped) options.onTransport?.(name);
  }

  /** @param {Transport} name */
  async function open(name) {
    if (stopped) return;
    if (name === "polling") {
      announce("polling");
      const poll = async () => {
        if (await check()) timer = setTimeout(poll, pollMs);
      };
      close = () => clearTimeout(timer);
      poll();
      return;
    }
    let url;
    try {
      url = await (name === "sse" ? source.sseUrl() : /** @type {() => Promise<string>} */ (source.wsUrl)());
    } catch (error) {
      if (error instanceof ApiError && FATAL.has(error.status)) fail(error);
      else dropped(false);
      return;
    }
    if (stopped) return;
    if (name === "sse") openEvents(url);
    else openSocket(url);
  }

  /** @param {string} url */
  function openEvents(url) {
    const events = new EventSource(url, { withCredentials: source.withCredentials });
    let opened = false;
    let gone = false;
    close = () => {
      gone = true;
      events.close();
    };
    /** @param {(data: Record<string, any>) => void} handle */
    const on = (handle) => (/** @type {Event} */ event) => {
      const data = parse(/** @type {MessageEvent} */ (event).data);
      if (data && !gone) handle(data);
    };
    events.addEventListener("open", () => {
      opened = true;
      failures = 0;
      announce("sse");
    });
    for (const type of ["snapshot", "transition", "progress"]) events.addEventListener(type, on(accept));
    events.addEventListener("log", on(acceptLog));
    events.addEventListener("eta", on(acceptEta));
    events.addEventListener("removed", on(() => finish("removed")));
    events.addEventListener("end", on((data) => finish(data.reason === "removed" ? "removed" : data.reason)));
    events.addEventListener("error", () => {
      // Closed by the server (the stream ended without `end`: a restart, a proxy) or never
      // opened (refused): reconnect ourselves, with a fresh ticket when one is needed.
      if (!gone) dropped(opened);
    });
  }

  /** @param {string} url */
  function openSocket(url) {
    const socket = new WebSocket(url);
    let opened = false;
    let gone = false;
    close = () => {
      gone = true;
      socket.close();
    };
    socket.addEventListener("open", async () => {
      opened = true;
      failures = 0;
      announce("websocket");
      await check(); // the session stream says nothing of a task that is not there
    });
    socket.addEventListener("message", (event) => {
      const data = parse(String(event.data));
      if (!data || gone || (data.taskId ?? data.id) !== id) return;
      if (data.type === "removed") finish("removed");
      else if (data.type === "log") acceptLog(data);
      else {
        accept(data);
        // A failure may be followed by an automatic retry: the task itself says.
        if (TERMINAL.has(data.status)) check();
      }
    });
    socket.addEventListener("close", () => {
      if (!gone) dropped(opened);
    });
  }

  openNext();
  return stop;
}
