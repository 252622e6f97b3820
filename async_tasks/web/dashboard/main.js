// @ts-check
// async-tasks live dashboard: vanilla JS in ES modules, no build step. The entry point.
//
// Modules: api.js (requests, sessions), keys.js (asking for an API key), state.js (what
// the page knows), cards.js (the task list), sync.js (event stream and polling),
// forms.js (forms from executor schemas), dom.js (helpers). All user-provided text goes
// into the DOM through textContent / attributes only. Checked by `tsc` (// @ts-check,
// JSDoc types) in the test command.

import { createSession, initSessionMode, isKeyRefusal, session, api } from "./api.js";
import { removeTask, renderFilters, renderList } from "./cards.js";
import { $, el, messageOf, toast } from "./dom.js";
import { loadExecutors } from "./forms.js";
import { askForKey, onNewKey } from "./keys.js";
import { live, markDirty, tasks } from "./state.js";
import { closeStream, loop, runCleanup, setLiveIndicator } from "./sync.js";

async function loadSession() {
  let info = await api("GET", "/session");
  if (session.mode === "tab" && !String(info.sessionKey).startsWith("s_")) {
    // Our token is no longer valid (e.g. the server restarted with a new key).
    await createSession();
    info = await api("GET", "/session");
  }
  session.key = info.sessionKey;
  $("#session-key").textContent = info.sessionKey;
  const pill = $("#session-mode");
  pill.hidden = session.mode !== "tab";
  pill.textContent = "this window only";
  $("#back-to-cookie").hidden = session.mode !== "tab";
  document.title = `async-tasks · ${info.sessionKey}`;
}

function resetView() {
  live.generation += 1;
  for (const id of [...tasks.keys()]) removeTask(id);
  live.total = 0;
  renderList();
}

/** @param {HTMLButtonElement} button */
async function newSession(button) {
  button.disabled = true;
  const previous = session.key;
  try {
    await createSession();
    resetView();
    await loadSession();
    if (session.key === previous) {
      toast("Session isolation is off on this server: every client shares one session.", "info");
      markDirty();
      return;
    }
    closeStream(); // reconnect in the new session
    live.streamRetryAt = 0;
    live.streamFailures = 0;
    live.cleanupDirty = true;
    markDirty();
    toast(`New session ${session.key}`, "ok");
  } catch (error) {
    toast(messageOf(error), "error");
  } finally {
    button.disabled = false;
  }
}

/**
 * Run `step`; when the server wants an API key, ask for one (once) and run it again.
 * @param {() => Promise<void>} step
 */
async function withKey(step) {
  for (;;) {
    try {
      return await step();
    } catch (error) {
      if (!isKeyRefusal(error)) throw error;
      await askForKey();
    }
  }
}

async function showExecutors() {
  try {
    await withKey(loadExecutors);
  } catch (error) {
    $("#executor-forms").replaceChildren(el("p", { class: "form-error", text: `Could not load executors: ${messageOf(error)}` }));
  }
}

async function main() {
  initSessionMode();
  renderFilters();
  setLiveIndicator();
  const newButton = /** @type {HTMLButtonElement} */ ($("#new-session"));
  const cleanupButton = /** @type {HTMLButtonElement} */ ($("#run-cleanup"));
  newButton.addEventListener("click", () => newSession(newButton));
  cleanupButton.addEventListener("click", () => runCleanup(cleanupButton));
  document.addEventListener("visibilitychange", () => { if (!document.hidden) markDirty(); });
  try {
    await withKey(async () => {
      if (session.mode === "tab" && (session.createFresh || !session.token)) {
        await createSession();
        session.createFresh = false;
        history.replaceState(null, "", "?session=tab");
      }
      await loadSession();
    });
  } catch (error) {
    toast(`Could not start a session: ${messageOf(error)}`, "error");
  }
  await showExecutors();
  // A key entered later (the server's keys changed): load again what is missing.
  onNewKey(() => {
    if (!live.formsReady) showExecutors();
    if (!session.key) loadSession().catch(() => {});
  });
  document.body.dataset.ready = "true";
  loop();
}

main();
