// @ts-check
// The API client: one `api()` call for every request, and the session the page uses.
//
// Sessions: by default the page uses the browser's session cookie (HttpOnly, set by
// the server). A window opened with ?session=new gets its own session instead: its
// token lives in sessionStorage (per tab) and goes out as the X-Session-Token header
// on every fetch (cookies are neither sent nor stored in that mode), so two windows
// can show two isolated sessions side by side.
//
// API keys: when the server has API_KEYS, the page asks for one once (keyRequired) and
// keeps it for the tab in sessionStorage; it goes out as X-API-Key.

const API_META = document.querySelector('meta[name="api-base"]');
export const API = (API_META?.getAttribute("content") || "/api/v1").replace(/\/$/, "");
const TOKEN_KEY = "async-tasks.session-token";
const API_KEY = "async-tasks.api-key";

export class ApiError extends Error {
  /**
   * @param {number} status
   * @param {string} code
   * @param {string} message
   * @param {unknown} [details]
   */
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

/** Whether `error` says the server wants an API key (none sent, or not one of its keys). */
/** @param {unknown} error */
export function isKeyRefusal(error) {
  return error instanceof ApiError && error.status === 401 && error.code === "unauthorized";
}

export const session = {
  mode: "cookie",
  /** @type {string | null} */
  token: null,
  /** @type {string | null} */
  key: null,
  createFresh: false,
  /** @type {string | null} the API key this tab uses (API_KEYS) */
  apiKey: sessionStorage.getItem(API_KEY),
};

export function initSessionMode() {
  const wanted = new URLSearchParams(location.search).get("session");
  if (wanted === "cookie") {
    sessionStorage.removeItem(TOKEN_KEY);
    history.replaceState(null, "", location.pathname);
  } else if (wanted === "new") {
    sessionStorage.removeItem(TOKEN_KEY);
    session.mode = "tab";
    session.createFresh = true;
  } else if (wanted === "tab" || sessionStorage.getItem(TOKEN_KEY)) {
    session.mode = "tab";
    session.token = sessionStorage.getItem(TOKEN_KEY);
  }
}

/** @param {string} token */
export function adoptToken(token) {
  session.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
}

/** Keep `key` for this tab (null forgets it). */
/** @param {string | null} key */
export function useApiKey(key) {
  session.apiKey = key;
  if (key) sessionStorage.setItem(API_KEY, key);
  else sessionStorage.removeItem(API_KEY);
}

/** Whether a stream must be opened with a ticket: the session or the key travel in headers. */
export function streamNeedsTicket() {
  return session.mode === "tab" || Boolean(session.apiKey);
}

/**
 * Call the API. `path` is relative to the API base unless it already starts with it.
 * @param {string} method
 * @param {string} path
 * @param {unknown} [body]
 * @returns {Promise<any>}
 */
export async function api(method, path, body) {
  const url = path.startsWith(`${API}/`) ? path : `${API}${path}`;
  /** @type {Record<string, string>} */
  const headers = { Accept: "application/json" };
  /** @type {RequestInit} */
  const init = { method, headers, cache: "no-store", credentials: session.mode === "tab" ? "omit" : "same-origin" };
  if (session.mode === "tab" && session.token) headers["X-Session-Token"] = session.token;
  if (session.apiKey) headers["X-API-Key"] = session.apiKey;
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch {
    throw new ApiError(0, "network_error", "Cannot reach the server.");
  }
  const issued = response.headers.get("X-Session-Token");
  if (issued && session.mode === "tab" && issued !== session.token) adoptToken(issued);
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!response.ok || (data && data.success === false)) {
    const error = data && typeof data.error === "object" ? data.error : null;
    const message = error && typeof error.message === "string" && error.message
      ? error.message
      : `The server answered ${response.status}${response.statusText ? ` ${response.statusText}` : ""}.`;
    throw new ApiError(response.status, error?.code ?? `http_${response.status}`, message, error?.details);
  }
  return data;
}

export async function createSession() {
  const answer = await api("POST", "/session");
  // No token when session isolation is off (everyone shares one session).
  if (session.mode === "tab" && answer.token) adoptToken(answer.token);
  return answer;
}
