// @ts-check
// What the page knows: the tasks it shows, the live-update bookkeeping, the filter.

export const STATUSES = ["pending", "running", "completed", "failed", "cancelled"];
export const TERMINAL = new Set(["completed", "failed", "cancelled"]);

/**
 * A task as the page holds it: a list item's fields, and its card's elements.
 * @typedef {object} TaskRecord
 * @property {string} id
 * @property {string} [name]
 * @property {string} [executor]
 * @property {string} [status]
 * @property {number} [progress]
 * @property {number} [createdAt]
 * @property {number | null} [completedAt]
 * @property {number | null} [startedAt]
 * @property {string | null} [currentStep]
 * @property {string | null} [currentStepDescription]
 * @property {string | null} [error]
 * @property {number} [attempts]
 * @property {number} [maxRetries]
 * @property {boolean} [deadLettered]
 * @property {LogLine[]} [logs] its log lines known here, oldest first, each once (by `n`)
 * @property {number | null} [queuePosition] its place in its session's line, while it waits
 * @property {number | null} [scheduledAt] when a delayed start (or a retry's backoff) ends, epoch ms
 * @property {string | null} [waitingReason] what holds it up when not its turn (no worker has its executor)
 * @property {Eta | null} [eta] when it should start and finish, on this browser's clock
 * @property {boolean} [logsFetched] its whole log was read (when its log was first opened)
 * @property {Record<string, HTMLElement> | null} refs
 */

/**
 * A line of a task's log.
 * @typedef {object} LogLine
 * @property {number} n its number in the task's log
 * @property {number} at
 * @property {string} message
 * @property {unknown} [data] partial results the executor attached
 */

/**
 * The server's estimate, with the times it names on this browser's clock.
 * @typedef {object} Eta
 * @property {number | null} startsAt
 * @property {number} finishesAt
 * @property {number | null} typicalMs
 */

/** Log lines a card keeps (the newest). */
export const MAX_LOG_LINES = 200;

/** @type {Map<string, TaskRecord>} id -> the task and its card */
export const tasks = new Map();
export const live = {
  /** @type {EventSource | null} */
  es: null,
  streaming: false,
  streamFailures: 0,
  streamRetryAt: 0,
  lastFull: 0,
  lastStats: 0,
  lastCleanup: 0,
  dirty: true,
  statsDirty: true,
  cleanupDirty: true,
  offline: false,
  /** Why the last round of requests failed (null when they work). */
  /** @type {string | null} */
  failing: null,
  /** The server wants an API key the page does not have (or refused the one it has). */
  locked: false,
  /** The "Create a task" forms are there (the empty list can point at them). */
  formsReady: false,
  /** Tasks the session holds in all (the list shows at most a page of them). */
  total: 0,
  generation: 0, // bumped on session change: late answers for the old session are dropped
};
/** What the task list shows: "all" or one status. */
export const view = { filter: "all" };

let waker = () => {};

/**
 * Set by the sync module: what `wake()` does (run the sync loop soon).
 * @param {() => void} callback
 */
export function setWaker(callback) {
  waker = callback;
}

/** Run the sync loop soon (after a change the page made or heard of). */
export function wake() {
  waker();
}

export function markDirty() {
  live.dirty = true;
  live.statsDirty = true;
  wake();
}
