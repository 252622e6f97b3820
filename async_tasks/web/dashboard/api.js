// The API client: one `api()` call for every request, and the session the page uses.
//
// Sessions: by default the page uses the browser's session cookie (HttpOnly, set by
// the server). A window opened with ?session=new gets its own session instead: its
// token lives in sessionStorage (per tab) and goes out as the X-Session-Token header
// on every fetch (cookies are neither sent nor stored in that mode), so two windows
// can show two isolated sessions side by side.

export const API = (document.querySelector('meta[name="api-base"]')?.content ?? "/api/v1").replace(/\/$/, "");
const TOKEN_KEY = "async-tasks.session-token";

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

export const session = { mode: "cookie", token: null, key: null, createFresh: false };

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

export function adoptToken(token) {
  session.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
}

/** Call the API. `path` is relative to the API base unless it already starts with it. */
export async function api(method, path, body) {
  const url = path.startsWith(`${API}/`) ? path : `${API}${path}`;
  const headers = { Accept: "application/json" };
  const init = { method, headers, cache: "no-store", credentials: session.mode === "tab" ? "omit" : "same-origin" };
  if (session.mode === "tab" && session.token) headers["X-Session-Token"] = session.token;
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
