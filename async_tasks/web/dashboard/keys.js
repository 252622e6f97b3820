// @ts-check
// Asking for an API key: with API_KEYS set, every request needs one. The page asks once
// (a dialog), keeps the key for the tab (sessionStorage) and tells the other modules, so
// they load again what failed instead of failing request after request.

import { session, useApiKey } from "./api.js";
import { $ } from "./dom.js";

/** @type {Array<() => void>} */
const listeners = [];
/** @type {Promise<void> | null} */
let asking = null;

/**
 * Run `listener` each time the page gets a new key.
 * @param {() => void} listener
 */
export function onNewKey(listener) {
  listeners.push(listener);
}

/** Whether the dialog is open (the page waits for a key). */
export function askingForKey() {
  return asking !== null;
}

/**
 * Ask for a key (once: callers while the dialog is open share it); resolves once one is entered.
 * @returns {Promise<void>}
 */
export function askForKey() {
  if (asking) return asking;
  const dialog = /** @type {HTMLDialogElement} */ ($("#key-dialog"));
  const form = /** @type {HTMLFormElement} */ ($("#key-form"));
  const input = /** @type {HTMLInputElement} */ ($("#key-input"));
  const problem = $("#key-error");
  problem.hidden = !session.apiKey;
  problem.textContent = session.apiKey ? "The server refused this key: check it and try again." : "";
  input.value = "";
  asking = new Promise((resolve) => {
    /** @param {SubmitEvent} event */
    const submit = (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      form.removeEventListener("submit", submit);
      useApiKey(key);
      dialog.close();
      asking = null;
      resolve();
      for (const listener of listeners) listener();
    };
    form.addEventListener("submit", submit);
  });
  // Escape would leave a page that can do nothing: the dialog stays until a key is entered.
  dialog.addEventListener("cancel", (event) => event.preventDefault());
  dialog.showModal();
  input.focus();
  return asking;
}
