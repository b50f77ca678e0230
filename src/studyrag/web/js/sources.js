// The sources panel: the notebook's documents live from /ws/notebooks/{id}, uploads with
// progress, cancel / retry / delete, and a checkbox per source for chat and search.
import { api, confirmDialog, errorBox, h, uploadFiles, wsUrl } from "./api.js";

const STEP_LABEL = {
  queued: "Queued",
  extracting: "Extracting text",
  chunking: "Splitting into passages",
  embedding: "Embedding",
  storing: "Saving",
  completed: "Done",
  failed: "Failed",
  cancelled: "Cancelled",
  rejected: "Rejected",
  duplicate: "Already added",
};
const FINAL = new Set(["completed", "failed", "cancelled"]);
const ACCEPT = ".pdf,.docx,.md,.markdown,.txt,.html,.htm";

export class SourcesPanel {
  constructor(root, notebook, { onChange, onOpen } = {}) {
    this.root = root;
    this.nb = notebook;
    this.onChange = onChange || (() => {});
    this.onOpen = onOpen || (() => {});
    this.docs = new Map();
    this.pending = []; // uploads not answered yet, and refused files
    this.excluded = new Set(JSON.parse(localStorage.getItem(this.key()) || "[]"));
    this.closed = false;
    this.build();
    this.connect();
  }

  key() {
    return `studyrag:excluded:${this.nb.id}`;
  }

  destroy() {
    this.closed = true;
    if (this.ws) this.ws.close(1000);
  }

  /** document_ids for filters: null when every source is included. */
  filterIds() {
    const done = [...this.docs.values()].filter((d) => d.status === "completed");
    const included = done.filter((d) => !this.excluded.has(d.id));
    if (included.length === done.length) return null;
    return included.map((d) => d.id);
  }

  completedCount() {
    return [...this.docs.values()].filter((d) => d.status === "completed").length;
  }

  build() {
    this.input = h("input", { type: "file", multiple: true, accept: ACCEPT, testid: "upload-input", id: "upload-input", class: "visually-hidden", onchange: () => { this.upload([...this.input.files]); this.input.value = ""; } });
    this.zone = h(
      "label",
      { class: "drop-zone", testid: "drop-zone", for: "upload-input", tabindex: "0", onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); this.input.click(); } } },
      h("strong", {}, "Add sources"),
      h("span", { class: "muted small" }, "Drop files here or click to choose · PDF, DOCX, Markdown, HTML, TXT"),
    );
    for (const ev of ["dragenter", "dragover"]) this.zone.addEventListener(ev, (e) => { e.preventDefault(); this.zone.classList.add("over"); });
    for (const ev of ["dragleave", "drop"]) this.zone.addEventListener(ev, (e) => { e.preventDefault(); this.zone.classList.remove("over"); });
    this.zone.addEventListener("drop", (e) => this.upload([...(e.dataTransfer ? e.dataTransfer.files : [])]));
    this.list = h("ul", { class: "source-list", "aria-label": "Sources" });
    this.errors = h("div", { class: "errors" });
    this.summary = h("span", { class: "muted small" });
    // A viewer reads, searches and chats; adding or removing sources is the owner's or an
    // editor's (the server refuses it anyway: the page does not offer it).
    this.canEdit = (this.nb.role || "owner") !== "viewer";
    this.root.replaceChildren(
      h("div", { class: "panel-head" }, h("h2", {}, "Sources"), this.summary),
      ...(this.canEdit
        ? [this.input, this.zone]
        : [h("p", { class: "muted small", testid: "viewer-note" }, "Shared with you to read: search and chat with these sources.")]),
      this.errors,
      this.list,
    );
    this.render();
  }

  connect() {
    const ws = new WebSocket(wsUrl(`/ws/notebooks/${this.nb.id}`));
    this.ws = ws;
    ws.onmessage = (e) => this.onEvent(JSON.parse(e.data));
    ws.onclose = (e) => {
      if (this.closed) return;
      if (e.code === 4404) return;
      setTimeout(() => !this.closed && this.connect(), 1500);
    };
  }

  onEvent(ev) {
    if (ev.type === "ready") {
      this.docs = new Map(ev.documents.map((d) => [d.id, d]));
    } else if (ev.type === "document_added") {
      this.docs.set(ev.document.id, ev.document);
      this.pending = this.pending.filter((p) => p.document_id !== ev.document.id);
    } else if (ev.type === "document_updated") {
      const d = this.docs.get(ev.document_id) || { id: ev.document_id, file_type: (ev.filename || "").split(".").pop(), metadata: {} };
      const progress = Math.max(Number(d.progress || 0), Number(ev.progress || 0));
      Object.assign(d, { filename: ev.filename || d.filename, status: ev.status, step: ev.step, progress, error: ev.error, error_code: ev.error_code, chunk_count: ev.chunks ?? d.chunk_count });
      this.docs.set(d.id, d);
      if (FINAL.has(ev.status)) this.refresh(d.id);
    } else if (ev.type === "document_deleted") {
      this.docs.delete(ev.document_id);
    } else if (ev.type === "error") {
      this.errors.append(errorBox({ message: ev.message }));
      return;
    } else {
      return;
    }
    this.render();
    this.onChange();
  }

  async refresh(id) {
    try {
      const d = await api(`/api/documents/${id}`);
      delete d.chunks;
      this.docs.set(id, d);
      this.render();
      this.onChange();
    } catch {
      /* deleted meanwhile */
    }
  }

  async upload(files) {
    if (!files.length) return;
    const entry = { id: `up-${Date.now()}`, filenames: files.map((f) => f.name), progress: 0, status: "uploading" };
    this.pending.push(entry);
    this.render();
    try {
      const res = await uploadFiles(this.nb.id, files, (p) => {
        entry.progress = p * 100;
        this.render();
      });
      this.pending = this.pending.filter((p) => p !== entry);
      for (const d of res.documents) {
        if (d.status === "rejected" || d.status === "duplicate") {
          this.pending.push({ id: `r-${Math.random()}`, filenames: [d.filename], status: d.status, error: d.error, document_id: d.document_id });
        } else if (!this.docs.has(d.document_id)) {
          this.docs.set(d.document_id, { id: d.document_id, filename: d.filename, status: "queued", step: "queued", progress: 0, file_type: d.filename.split(".").pop(), metadata: {} });
        }
      }
    } catch (err) {
      this.pending = this.pending.filter((p) => p !== entry);
      this.errors.append(errorBox(err, { onDismiss: () => {} }));
    }
    this.render();
    this.onChange();
  }

  toggle(doc, included) {
    if (included) this.excluded.delete(doc.id);
    else this.excluded.add(doc.id);
    localStorage.setItem(this.key(), JSON.stringify([...this.excluded]));
    this.onChange();
    this.render();
  }

  async act(doc, action) {
    try {
      if (action === "delete") {
        if (!(await confirmDialog(`Delete ${doc.filename}? Its passages leave every chat and search of this notebook.`))) return;
        await api(`/api/documents/${doc.id}`, { method: "DELETE" });
        this.docs.delete(doc.id);
      } else {
        await api(`/api/documents/${doc.id}/${action}`, { method: "POST" });
        if (action === "retry") Object.assign(doc, { status: "queued", step: "queued", progress: 0, error: null });
      }
    } catch (err) {
      this.errors.append(errorBox(err, { onDismiss: () => {} }));
    }
    this.render();
    this.onChange();
  }

  render() {
    const docs = [...this.docs.values()];
    const rows = [];
    for (const p of this.pending) {
      rows.push(
        h(
          "li",
          { class: `source-row ${p.status}`, testid: "source-row" },
          h("div", { class: "source-main" }, h("span", { class: "source-name" }, p.filenames.join(", "))),
          h(
            "div",
            { class: "source-meta" },
            h("span", { class: "status", testid: "source-status" }, p.status === "uploading" ? `Uploading ${Math.round(p.progress)}%` : STEP_LABEL[p.status] || p.status),
            p.status !== "uploading" ? h("button", { type: "button", class: "ghost small", onclick: () => { this.pending = this.pending.filter((x) => x !== p); this.render(); } }, "Dismiss") : null,
          ),
          p.status === "uploading" ? progressBar(p.progress, "Upload") : null,
          p.error ? h("div", { class: "source-error" }, p.error) : null,
        ),
      );
    }
    for (const d of docs) rows.push(this.row(d));
    this.list.replaceChildren(...rows);
    if (!rows.length) {
      this.list.append(h("li", { class: "empty small" }, "No sources yet. Add the PDFs, notes or web pages of your course: answers will only use what you add here, and cite it."));
    }
    const done = this.completedCount();
    const incl = done - docs.filter((d) => d.status === "completed" && this.excluded.has(d.id)).length;
    this.summary.textContent = docs.length ? `${incl} of ${done} used` : "";
  }

  row(d) {
    const final = FINAL.has(d.status);
    const key = final ? d.status : d.step || d.status;
    let label = STEP_LABEL[key] || key;
    if (key === "embedding") label = `Embedding ${Math.round(d.progress || 0)}%`;
    else if (!final) label = `${label}…`;
    const pages = d.metadata && d.metadata.page_count;
    const included = !this.excluded.has(d.id);
    const completed = d.status === "completed";
    return h(
      "li",
      { class: `source-row ${d.status}`, testid: "source-row", dataset: { documentId: d.id, status: d.status } },
      h(
        "div",
        { class: "source-main" },
        h("input", { type: "checkbox", checked: included && completed, disabled: !completed, testid: "source-include", "aria-label": `Use ${d.filename} in chat and search`, onchange: (e) => this.toggle(d, e.target.checked) }),
        h("button", { type: "button", class: "link source-name", title: d.filename, disabled: !completed, onclick: () => this.onOpen(d) }, d.filename),
      ),
      h(
        "div",
        { class: "source-meta" },
        h("span", { class: "badge" }, (d.file_type || "").toUpperCase()),
        pages ? h("span", { class: "muted small" }, `${pages} p.`) : null,
        h("span", { class: `status ${d.status}`, testid: "source-status" }, label),
        h(
          "span",
          { class: "actions" },
          !this.canEdit ? null : !final ? h("button", { type: "button", class: "ghost small", testid: "source-cancel", onclick: () => this.act(d, "cancel") }, "Cancel") : null,
          this.canEdit && (d.status === "failed" || d.status === "cancelled") ? h("button", { type: "button", class: "ghost small", testid: "source-retry", onclick: () => this.act(d, "retry") }, "Retry") : null,
          this.canEdit && final ? h("button", { type: "button", class: "ghost small", "aria-label": `Delete ${d.filename}`, testid: "source-delete", onclick: () => this.act(d, "delete") }, "Delete") : null,
        ),
      ),
      !final ? progressBar(d.progress || 0, d.filename) : null,
      d.status === "failed" && d.error ? h("div", { class: "source-error", role: "status" }, d.error) : null,
    );
  }
}

function progressBar(pct, label) {
  const bar = h("progress", { max: 100, value: Math.round(pct), "aria-label": `${label} progress`, class: "bar" });
  return bar;
}
