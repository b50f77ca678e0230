// HTTP and WebSocket helpers: every API error becomes an ApiError with its message and hint.

export class ApiError extends Error {
  constructor(status, body) {
    const b = body && typeof body === "object" ? body : {};
    super(b.message || `The server answered ${status}.`);
    this.status = status;
    this.code = b.error_code || (status ? `HTTP_${status}` : "NETWORK");
    this.hint = (b.details && b.details.hint) || b.hint || "";
    this.details = b.details || {};
  }
}

/** A JSON request to the API; throws ApiError (never a raw exception) on failure. */
export async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, signal, headers: {} };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, {
      message: "The StudyRAG server cannot be reached.",
      details: { hint: "Check that `make run` (or `studyrag serve`) is still running, then reload." },
    });
  }
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { message: text.slice(0, 300) };
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

/** Upload files with upload progress (fetch has none): resolves with the 202 body. */
export function uploadFiles(notebookId, files, onProgress) {
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  return uploadForm(`/api/notebooks/${encodeURIComponent(notebookId)}/documents`, form, onProgress);
}

/** POST a multipart form, reporting the share of it sent (0..1); resolves with the JSON body. */
export function uploadForm(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onerror = () =>
      reject(new ApiError(0, { message: "The upload was interrupted.", details: { hint: "Check the server is running and try again." } }));
    xhr.onload = () => {
      let data = null;
      try {
        data = JSON.parse(xhr.responseText);
      } catch {
        data = { message: xhr.responseText.slice(0, 300) };
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else reject(new ApiError(xhr.status, data));
    };
    xhr.send(form);
  });
}

/**
 * POST a JSON body to a Server-Sent Events endpoint (EventSource can only GET) and call
 * onEvent(name, data) per event. An answer that is not a stream throws its ApiError.
 */
export async function postEvents(path, body, onEvent, { signal } = {}) {
  let res;
  try {
    res = await fetch(path, { method: "POST", signal, headers: { "content-type": "application/json", accept: "text/event-stream" }, body: JSON.stringify(body) });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, { message: "The StudyRAG server cannot be reached.", details: { hint: "Check that `make run` (or `studyrag serve`) is still running, then reload." } });
  }
  if (!res.ok) {
    const text = await res.text();
    let data = null;
    try {
      data = JSON.parse(text);
    } catch {
      data = { message: text.slice(0, 300) };
    }
    throw new ApiError(res.status, data);
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (!data.length) continue; // a ping (comment)
      let parsed = null;
      try {
        parsed = JSON.parse(data.join("\n"));
      } catch {
        parsed = { text: data.join("\n") };
      }
      onEvent(name, parsed);
    }
  }
}

const JOB_FINISHED = new Set(["completed", "failed", "cancelled"]);

/**
 * Follow a job to its end: onEvent(type, event) for every event of GET /api/jobs/{id}/events
 * (`snapshot` first); resolves with the finished job. When the stream breaks, polls instead.
 */
export function followJob(jobId, onEvent) {
  return new Promise((resolve, reject) => {
    const es = new EventSource(`/api/jobs/${encodeURIComponent(jobId)}/events`);
    let finished = false;
    const finish = (job) => {
      if (finished) return;
      finished = true;
      es.close();
      resolve(job);
    };
    const handle = (type) => (e) => {
      let data = null;
      try {
        data = JSON.parse(e.data);
      } catch {
        return;
      }
      onEvent(type, data);
      const job = type === "snapshot" ? data : type === "job_updated" ? data.job : null;
      if (job && JOB_FINISHED.has(job.status)) finish(job);
    };
    for (const type of ["snapshot", "job_progress", "job_updated", "document_updated", "document_added", "notebook_imported"]) {
      es.addEventListener(type, handle(type));
    }
    es.onerror = async () => {
      if (finished) return;
      es.close();
      // The stream ended or broke: ask for the job until it is done.
      try {
        for (;;) {
          const job = await api(`/api/jobs/${encodeURIComponent(jobId)}`);
          onEvent("snapshot", job);
          if (JOB_FINISHED.has(job.status)) return finish(job);
          await new Promise((r) => setTimeout(r, 1000));
        }
      } catch (err) {
        finished = true;
        reject(err);
      }
    };
  });
}

export function wsUrl(path) {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
}

/** Build an element: h("div", {class: "x", onclick: fn}, "text", child). Text is never HTML. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "testid") el.dataset.testid = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** An error as the user sees it: the message, and the hint saying what to do next. */
export function errorBox(err, { onDismiss } = {}) {
  const message = String((err && err.message) || err || "Something went wrong.");
  const hint = (err && (err.hint || (err.details && err.details.hint))) || "";
  const box = h(
    "div",
    { class: "error", role: "alert", testid: "error" },
    h("strong", {}, message),
    hint ? h("div", { class: "hint" }, hint) : null,
  );
  if (onDismiss) {
    box.append(h("button", { class: "ghost small", type: "button", "aria-label": "Dismiss", onclick: () => { box.remove(); onDismiss(); } }, "Dismiss"));
  }
  return box;
}

export function relTime(iso) {
  if (!iso) return "never";
  const t = new Date(iso).getTime();
  const s = Math.round((Date.now() - t) / 1000);
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  if (s < 86400 * 30) return `${Math.round(s / 86400)} d ago`;
  return new Date(iso).toLocaleDateString();
}

export function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

/** A modal confirmation (a <dialog>, not window.confirm): resolves true or false. */
export function confirmDialog(message, { confirm = "Delete", danger = true } = {}) {
  return new Promise((resolve) => {
    const dlg = h(
      "dialog",
      { class: "confirm", "aria-label": "Confirm" },
      h("p", {}, message),
      h(
        "div",
        { class: "row end" },
        h("button", { type: "button", class: "ghost", onclick: () => dlg.close("no") }, "Cancel"),
        h("button", { type: "button", class: danger ? "danger" : "primary", testid: "confirm", onclick: () => dlg.close("yes") }, confirm),
      ),
    );
    dlg.addEventListener("close", () => {
      resolve(dlg.returnValue === "yes");
      dlg.remove();
    });
    document.body.append(dlg);
    dlg.showModal();
  });
}

/** Ask for a line of text in a <dialog>: resolves the text, or null when cancelled. */
export function promptDialog(label, value = "") {
  return new Promise((resolve) => {
    const input = h("input", { type: "text", value, "aria-label": label, maxlength: 200, required: true });
    const form = h(
      "form",
      { method: "dialog" },
      h("label", {}, label, input),
      h(
        "div",
        { class: "row end" },
        h("button", { type: "button", class: "ghost", onclick: () => dlg.close("") }, "Cancel"),
        h("button", { type: "submit", class: "primary", value: "ok" }, "Save"),
      ),
    );
    const dlg = h("dialog", { class: "confirm", "aria-label": label }, form);
    dlg.addEventListener("close", () => {
      resolve(dlg.returnValue === "ok" && input.value.trim() ? input.value.trim() : null);
      dlg.remove();
    });
    document.body.append(dlg);
    dlg.showModal();
    input.select();
  });
}
