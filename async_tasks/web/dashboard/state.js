// What the page knows: the tasks it shows, the live-update bookkeeping, the filter.

export const STATUSES = ["pending", "running", "completed", "failed", "cancelled"];
export const TERMINAL = new Set(["completed", "failed", "cancelled"]);

export const tasks = new Map(); // id -> task record (summary + status details) with its DOM refs
export const live = {
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
  syncing: false,
  offline: false,
  generation: 0, // bumped on session change: late answers for the old session are dropped
};
/** What the task list shows: "all" or one status. */
export const view = { filter: "all" };

let waker = () => {};

/** Set by the sync module: what `wake()` does (run the sync loop soon). */
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
