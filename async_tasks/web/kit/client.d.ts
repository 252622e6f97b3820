// Types of the async-tasks browser client (/client.js), served beside it as /client.d.ts.
//
// Save both beside your code (curl -o src/async-tasks.js http://localhost:3000/client.js
// and -o src/async-tasks.d.ts .../client.d.ts) and TypeScript checks every call; or
// import the module straight from the server in a page: no build step needed.

export type TaskStatus = "pending" | "running" | "completed" | "failed" | "cancelled";

/** One log line of a task (the server sends them as `log` events: ready for when it does). */
export interface LogLine {
  /** Epoch milliseconds. */
  at: number;
  message: string;
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
  logs?: LogLine[];
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
  /** Log lines so far, oldest first (once the server sends them). */
  logs?: LogLine[];
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
