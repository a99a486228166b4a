// Calls to the server that serves this page. Every URL is relative to the page (`base` is the server's
// root however it is mounted), so the page works behind a path prefix; the API key, when one is typed,
// goes with every call (EventSource cannot send headers, so events are read with fetch).
export const base = new URL("..", document.baseURI);

export class ServerError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers(extra = {}) {
  const key = document.getElementById("api_key").value.trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

export async function call(path, options = {}) {
  const response = await fetch(new URL(path, base), { ...options, headers: headers(options.headers) });
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = { error: text }; }
  if (!response.ok) {
    const error = body && body.error;
    const message = typeof error === "string" ? error : (error && error.message) || `HTTP ${response.status}`;
    throw new ServerError(response.status, message);
  }
  return body;
}

export const jobsPath = (model) => `v1/models/${encodeURIComponent(model)}/jobs`;

export function submit(model, fields) {
  return call(jobsPath(model), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ instances: [fields] }),
  });
}

export const cancel = (model, id) => call(`${jobsPath(model)}/${id}`, { method: "DELETE" });
export const read = (model, id) => call(`${jobsPath(model)}/${id}`);

const FINISHED = ["succeeded", "failed", "cancelled"];

// Follows a job through its Server-Sent Events until it ends; polls if the stream stops early.
export async function follow(model, id, onChange, signal) {
  const response = await fetch(new URL(`${jobsPath(model)}/${id}/events`, base), {
    headers: headers({ Accept: "text/event-stream" }), signal,
  });
  let last = null;
  if (response.ok && response.body) {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5)).join("\n");
        if (!data) continue;  // a keep-alive comment
        const state = JSON.parse(data);
        if (!state.status) continue;  // an `error` event: fall back to polling below
        last = state;
        onChange(state);
        if (FINISHED.includes(state.status)) { reader.cancel(); return state; }
      }
    }
  }
  while (!last || !FINISHED.includes(last.status)) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    if (signal && signal.aborted) throw new DOMException("aborted", "AbortError");
    last = await read(model, id);
    onChange(last);
  }
  return last;
}
