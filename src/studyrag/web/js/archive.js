// Notebook export (a zip download) and import (upload with progress, then the restore job's
// progress until the new notebook exists).
import { ApiError, api, errorBox, followJob, h, plural, uploadForm } from "./api.js";

export class ArchivePanel {
  constructor(root) {
    this.root = root;
    this.closed = false;
    this.build();
    this.loadNotebooks();
  }

  destroy() {
    this.closed = true;
  }

  build() {
    this.select = h("select", { testid: "export-notebook", "aria-label": "Notebook to export" });
    this.vectors = h("input", { type: "checkbox", id: "export-vectors", testid: "export-vectors" });
    this.exportBtn = h("button", { type: "button", class: "primary", testid: "export-download", onclick: () => this.download() }, "Download archive");
    this.exportMsg = h("div", { class: "msg", testid: "export-message", "aria-live": "polite" });
    this.file = h("input", { type: "file", accept: ".zip,application/zip", id: "import-input", testid: "import-input", class: "visually-hidden", onchange: () => { const f = this.file.files[0]; this.file.value = ""; if (f) this.import(f); } });
    this.importBtn = h("label", { for: "import-input", class: "button primary", testid: "import-choose", tabindex: "0", onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); this.file.click(); } } }, "Choose an archive…");
    this.progress = h("div", { class: "job", testid: "import-job" });
    this.importMsg = h("div", { class: "msg", testid: "import-message", "aria-live": "polite" });
    this.root.replaceChildren(
      h("h2", { id: "h-archive" }, "Notebook export and import"),
      h(
        "div",
        { class: "model-block" },
        h("h3", {}, "Export"),
        h("p", { class: "muted small" }, "One zip file with the notebook's originals, extracted text, passages and chats: a backup, or a way to move it to another StudyRAG."),
        h("div", { class: "row" }, this.select, h("label", { class: "check small", for: "export-vectors" }, this.vectors, " include vectors (faster import with the same embedding model)")),
        h("div", { class: "row" }, this.exportBtn),
        this.exportMsg,
      ),
      h(
        "div",
        { class: "model-block" },
        h("h3", {}, "Import"),
        h("p", { class: "muted small" }, "A StudyRAG archive becomes a new notebook; the whole file is checked first, and a refused archive changes nothing."),
        this.file,
        h("div", { class: "row" }, this.importBtn),
        this.progress,
        this.importMsg,
      ),
    );
  }

  async loadNotebooks(selectId) {
    try {
      const res = await api("/api/notebooks");
      const keep = selectId || this.select.value;
      this.select.replaceChildren(...res.items.map((nb) => h("option", { value: nb.id, selected: nb.id === keep }, `${nb.name} (${plural(nb.documents, "source")}, ${plural(nb.conversations, "chat")})`)));
      this.exportBtn.disabled = !res.items.length;
    } catch (err) {
      this.exportMsg.replaceChildren(errorBox(err));
    }
  }

  async download() {
    const id = this.select.value;
    if (!id) return;
    const url = `/api/notebooks/${encodeURIComponent(id)}/export${this.vectors.checked ? "?vectors=true" : ""}`;
    this.exportMsg.replaceChildren();
    this.exportBtn.disabled = true;
    // The server checks before its first byte (NB_004 while sources are still processing):
    // ask once and read only the status, so an error is shown here, not saved as the file.
    const ctl = new AbortController();
    try {
      let res;
      try {
        res = await fetch(url, { signal: ctl.signal });
      } catch {
        throw new ApiError(0, { message: "The StudyRAG server cannot be reached.", details: { hint: "Check that it is still running, then try again." } });
      }
      if (!res.ok) {
        let body = null;
        try {
          body = await res.json();
        } catch {
          body = null;
        }
        throw new ApiError(res.status, body);
      }
      ctl.abort();
      const a = h("a", { href: url, download: "", hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      this.exportMsg.replaceChildren(h("span", { class: "ok small" }, "The download has started."));
    } catch (err) {
      this.exportMsg.replaceChildren(errorBox(err));
    } finally {
      this.exportBtn.disabled = false;
    }
  }

  async import(file) {
    this.importMsg.replaceChildren();
    const upBar = h("progress", { max: 100, value: 0, class: "bar", testid: "import-upload-progress", "aria-label": "Upload progress" });
    const jobBar = h("progress", { max: 100, value: 0, class: "bar", testid: "import-progress", "aria-label": "Import progress", hidden: true });
    const text = h("div", { class: "small", testid: "import-status" }, `Uploading ${file.name}…`);
    this.progress.replaceChildren(text, upBar, jobBar);
    this.importBtn.classList.add("disabled");
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      const accepted = await uploadForm("/api/notebooks/import", form, (p) => {
        upBar.value = Math.round(p * 100);
        text.textContent = p < 1 ? `Uploading ${file.name}: ${upBar.value}%` : "Checking the archive…";
      });
      upBar.hidden = true; // uploaded and checked: the restore's own progress from here
      jobBar.hidden = false;
      text.textContent = `Restoring “${accepted.name}”: ${plural(accepted.documents, "source")}, ${plural(accepted.conversations, "chat")}…`;
      const job = await followJob(accepted.job_id, (type, ev) => {
        const pct = type === "job_progress" ? ev.progress : type === "snapshot" ? ev.progress : null;
        if (pct !== null && pct !== undefined) {
          jobBar.value = Math.round(Number(pct));
          if (type === "job_progress" && ev.total) text.textContent = `Restoring “${accepted.name}”: ${ev.done} of ${ev.total} (${jobBar.value}%)`;
        }
      });
      if (this.closed) return;
      if (job.status !== "completed") throw new ApiError(0, { message: `The import failed: ${job.error || job.status}.`, details: { hint: "Nothing of it was kept. Check the archive, or the server log." } });
      jobBar.value = 100;
      const meta = job.metadata || {};
      const nbId = meta.notebook_id || job.notebook_id;
      const name = meta.notebook_name || accepted.name;
      text.textContent = "Import done.";
      this.importMsg.replaceChildren(h("span", { class: "ok small" }, `Imported as “${name}”. `, nbId ? h("a", { href: `#/n/${nbId}`, testid: "import-open" }, "Open it") : null));
      this.loadNotebooks();
    } catch (err) {
      this.progress.replaceChildren();
      this.importMsg.replaceChildren(errorBox(err));
    } finally {
      this.importBtn.classList.remove("disabled");
    }
  }
}
