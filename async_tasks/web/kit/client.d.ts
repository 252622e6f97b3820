// Types of the async-tasks browser client (/client.js), served beside it as /client.d.ts.
//
// Save both beside your code (curl -o src/async-tasks.js http://localhost:3000/client.js
// and -o src/async-tasks.d.ts .../client.d.ts) and TypeScript checks every call; or
// import the module straight from the server in a page: no build step needed.

export type TaskStatus = "pending" | "running" | "completed" | "failed" | "cancelled";

/** One line of a task's log (`await progress.log(...)` in its executor). */
export interface LogLine {
  /** Its number in the task's log (1 first; lines dropped beyond the server's bounds still count). */
  n: number;
  /** When the executor wrote it (epoch ms). */
  at: number;
  message: string;
  /** Partial results the executor attached (any JSON value). */
  data?: unknown;
}

/** When a waiting or running task should start and finish (the server's estimate). */
export interface Eta {
  /** Until it starts, from when the estimate was made (ms); null once it runs. */
  startsInMs: number | null;
  /** Until it finishes, from when the estimate was made (ms). */
  finishesInMs: number;
  /** Its executor's typical run time (the median of its recent runs); null: estimated from its own pace. */
  typicalMs: number | null;
  /** How many recent runs that median is of. */
  samples: number;
}

/** An estimate as `watch` delivers it: also the times it names, on this browser's clock. */
export interface WatchedEta extends Eta {
  /** When it should start (epoch ms, this browser's clock); null once it runs. */
  startsAt: number | null;
  /** When it should finish (epoch ms, this browser's clock). */
  finishesAt: number;
}

/** A task as the API returns it (`GET /tasks/{id}`). */
export interface Task {
  id: string;
  sessionKey: string;
  executor: string;
  name: string;
  description: string;
  params: unknown;
  metadata: Record<string, unknown>;
  tags: string[];
  status: TaskStatus;
  progress: number;
  currentStep: string | null;
  currentStepDescription: string | null;
  result: unknown;
  error: string | null;
  attempts: number;
  priority: number;
  timeoutMs: number | null;
  maxRetries: number;
  autoRetries: number;
  deadLettered: boolean;
  createdAt: number;
  updatedAt: number;
  startedAt: number | null;
  completedAt: number | null;
  /** When a pending task waiting for its time starts (a delayed start, a retry's backoff). */
  scheduledAt: number | null;
  /** Why a pending task has not started, when not just its turn: "waiting for a worker that runs `report`". */
  waitingReason: string | null;
  history: Array<{ at: number; status: TaskStatus; previous?: TaskStatus | null; attempt?: number; reason?: string | null; error?: string | null }>;
  /** Its log, oldest first (within the server's bounds: TASK_LOG_LINES, TASK_LOG_BYTES). */
  logs: LogLine[];
  /** How many of its oldest lines were dropped to stay within them. */
  logsDropped: number;
}

/** `GET /tasks/{id}` (and the answers of create, cancel, retry): the task and where it stands. */
export interface TaskAnswer {
  task: Task;
  /** Its place in its session's line (1: next) while it waits; null otherwise. */
  queuePosition: number | null;
  /** When it should start and finish, while it waits or runs and something is known to estimate from. */
  eta: Eta | null;
}

/** A list item (`GET /tasks`): what a task's card shows. */
export interface TaskSummary {
  id: string;
  name: string;
  executor: string;
  status: TaskStatus;
  progress: number;
  createdAt: number;
  completedAt: number | null;
  currentStep: string | null;
  currentStepDescription: string | null;
  error: string | null;
  attempts: number;
  startedAt: number | null;
  updatedAt: number;
  maxRetries: number;
  autoRetries: number;
  deadLettered: boolean;
  /** Its latest log lines (at most 3; the full task has them all). */
  logs: LogLine[];
  queuePosition: number | null;
  eta: Eta | null;
  scheduledAt: number | null;
  waitingReason: string | null;
}

export interface TaskList {
  tasks: TaskSummary[];
  /** How many this page holds. */
  count: number;
  /** How many match in all. */
  total: number;
}

/** The task as `watch` sees it change: each call gets a new object. */
export interface TaskUpdate {
  id: string;
  name: string | null;
  executor: string | null;
  status: TaskStatus;
  /** 0 to 100; never goes back within an attempt (a retry starts again from 0). */
  progress: number;
  currentStep: string | null;
  currentStepDescription: string | null;
  error: string | null;
  /** The result, once completed. */
  result: unknown;
  /** The attempt this state belongs to (0 before the first run). */
  attempt: number;
  /** When the task reached this state (epoch ms). */
  at: number;
  /** Its log lines so far, oldest first, each once (absent until it has one). */
  logs?: LogLine[];
  /** How many of its oldest lines the server dropped (its bounds), once known. */
  logsDropped?: number;
  /** Its place in its session's line (1: next) while it waits; null otherwise or when not known. */
  queuePosition: number | null;
  /** When it should start and finish, while it waits or runs and something is known to estimate from. */
  eta: WatchedEta | null;
}

export type Transport = "sse" | "websocket" | "polling";

export interface WatchOptions {
  /** Called once when the task has settled (completed, failed for good, cancelled) or was removed; nothing follows. */
  onEnd?: (task: TaskUpdate | null, reason: TaskStatus | "removed") => void;
  /** Called when watching cannot go on (the task is not found, the link expired, the key was refused); it stops. */
  onError?: (error: ApiError) => void;
  /** Called with the transport in use, each time it changes. */
  onTransport?: (transport: Transport) => void;
  /** The transports to try, in order (default: all three; the share page has no WebSocket). */
  transports?: Transport[];
  /** Milliseconds between polls when polling (default 700). */
  pollIntervalMs?: number;
}

export interface CreateOptions {
  name?: string;
  description?: string;
  metadata?: Record<string, unknown>;
  tags?: string[];
  /** Start at once (default true). */
  start?: boolean;
  priority?: number;
  timeoutMs?: number;
  maxRetries?: number;
  /** Start at this time (epoch ms; implies start): pending until then, `scheduledAt` saying when. */
  startAt?: number;
  /** The same key in the same session returns the same task: a create safe to repeat. */
  idempotencyKey?: string;
}

export interface ListFilter {
  status?: TaskStatus;
  executor?: string;
  tag?: string;
  deadLetter?: boolean;
  limit?: number;
  offset?: number;
}

export interface ShareLink {
  /** A page following the task, read-only, for someone without the session. */
  url: string;
  /** When the link stops working (epoch ms). */
  expiresAt: number;
  token: string;
}

export interface ConnectOptions {
  /** The server, e.g. "http://localhost:3000" (default: where this module was loaded from). */
  baseUrl?: string;
  /** A session token (from `POST /api/v1/session`); without one, the browser's session cookie, or the session the server hands out on the first call. */
  token?: string | null;
  /** With API_KEYS set on the server: one of the keys. */
  apiKey?: string | null;
  /** Where the API is mounted (default "/api/v1"). */
  apiPath?: string;
}

export interface Client {
  readonly baseUrl: string;
  /** The session token in use: adopted from the server's answer when none was given (null for a cookie or IP session). */
  readonly token: string | null;
  /** Create a task of `executor` with `params` (validated by the server); it starts at once unless `start: false`. */
  createTask(executor: string, params?: Record<string, unknown>, options?: CreateOptions): Promise<Task>;
  getTask(id: string): Promise<Task>;
  list(filter?: ListFilter): Promise<TaskList>;
  cancel(id: string): Promise<Task>;
  retry(id: string): Promise<Task>;
  /** Delete a task that is not running. */
  remove(id: string): Promise<void>;
  /** A link to a read-only page following the task. */
  share(id: string): Promise<ShareLink>;
  /**
   * Follow a task: `onUpdate` gets it each time it changes, never twice the same state and
   * never an older one, through dropped connections. Uses the event stream, else the
   * WebSocket, else polling; stops by itself at the end. Returns a function that stops it.
   */
  watch(id: string, onUpdate: (task: TaskUpdate) => void, options?: WatchOptions): () => void;
}

/** A client of the server at `baseUrl`. Nothing is sent until the first call. */
export function connect(options?: ConnectOptions): Client;

/**
 * Where a watched task stands, for a person: "3rd in line · starts in about 12 s", "about
 * 8 s left", or "" when nothing is known. `now` is this browser's clock (default: now): call
 * it again every second to count down.
 */
export function outlookText(task: TaskUpdate, now?: number): string;

/**
 * Follow the task a share link names (the link from `share`, or `/share/<token>`), with no
 * session: the event stream, else polling.
 */
export function watchShared(link: string, onUpdate: (task: TaskUpdate) => void, options?: SharedWatchOptions): () => void;

export interface SharedWatchOptions extends WatchOptions {
  /** Where the API is mounted (default "/api/v1"). */
  apiPath?: string;
}

/** What the server refused, with the contract's error code and message. */
export class ApiError extends Error {
  constructor(status: number, code: string, message: string, details?: unknown);
  /** The HTTP status (0: the server could not be reached). */
  readonly status: number;
  /** The contract's `error.code`, e.g. "task_not_found", "unauthorized", "share_link_expired". */
  readonly code: string;
  readonly details: unknown;
}
