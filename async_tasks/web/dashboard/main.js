// async-tasks live dashboard: vanilla JS in ES modules, no build step. The entry point.
//
// Modules: api.js (requests, sessions), state.js (what the page knows), cards.js (the
// task list), sync.js (event stream and polling), forms.js (forms from executor
// schemas), dom.js (helpers). All user-provided text goes into the DOM through
// textContent / attributes only.

import { createSession, initSessionMode, session, api } from "./api.js";
import { removeTask, renderFilters, renderList } from "./cards.js";
import { $, el, toast } from "./dom.js";
import { loadExecutors } from "./forms.js";
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
    if (session.mode === "cookie") {
      closeStream(); // reconnect with the new cookie
      live.streamRetryAt = 0;
      live.streamFailures = 0;
    }
    live.cleanupDirty = true;
    markDirty();
    toast(`New session ${session.key}`, "ok");
  } catch (error) {
    toast(error.message, "error");
  } finally {
    button.disabled = false;
  }
}

async function main() {
  initSessionMode();
  renderFilters();
  setLiveIndicator();
  $("#new-session").addEventListener("click", (event) => newSession(event.currentTarget));
  $("#run-cleanup").addEventListener("click", (event) => runCleanup(event.currentTarget));
  document.addEventListener("visibilitychange", () => { if (!document.hidden) markDirty(); });
  try {
    if (session.mode === "tab" && (session.createFresh || !session.token)) {
      await createSession();
      history.replaceState(null, "", "?session=tab");
    }
    await loadSession();
  } catch (error) {
    toast(`Could not start a session: ${error.message}`, "error");
  }
  try {
    await loadExecutors();
  } catch (error) {
    $("#executor-forms").replaceChildren(el("p", { class: "form-error", text: `Could not load executors: ${error.message}` }));
  }
  document.body.dataset.ready = "true";
  loop();
}

main();
