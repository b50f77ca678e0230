// The source viewer beside the chat: PDFs rendered with PDF.js (server PNG as the fallback)
// with the cited rectangles drawn over the page; other formats as their extracted text,
// scrolled to the highlighted passage.
import { api, errorBox, h } from "./api.js";

const TEXT_WINDOW = 200000;
const STANDARD_FONTS = new URL("../vendor/pdfjs/standard_fonts/", import.meta.url).href;
let pdfjsPromise = null;

function loadPdfjs() {
  if (!pdfjsPromise) {
    pdfjsPromise = import("../vendor/pdfjs/pdf.min.mjs").then((lib) => {
      lib.GlobalWorkerOptions.workerSrc = new URL("../vendor/pdfjs/pdf.worker.min.mjs", import.meta.url).href;
      return lib;
    });
  }
  return pdfjsPromise;
}

export class Viewer {
  constructor(root, { onClose } = {}) {
    this.root = root;
    this.onClose = onClose;
    this.doc = null;
    this.pdf = null;
    this.page = 1;
    this.rects = [];
    this.token = 0;
  }

  close() {
    this.root.hidden = true;
    this.root.replaceChildren();
    this.doc = null;
    this.pdf = null;
    document.body.classList.remove("viewer-open");
    this.onClose && this.onClose();
  }

  /** Open at a passage: {document_id, chunk_id?, start?, end?, page?}. */
  async open(target) {
    const token = ++this.token;
    this.root.hidden = false;
    document.body.classList.add("viewer-open");
    this.shell(target.filename || "Loading…");
    try {
      const doc = this.doc && this.doc.id === target.document_id ? this.doc : await api(`/api/documents/${target.document_id}`);
      if (token !== this.token) return;
      if (!this.doc || this.doc.id !== doc.id) this.pdf = null;
      this.doc = doc;
      let chunk = null;
      if (target.chunk_id != null) {
        const q = target.start != null && target.end != null && target.end > target.start ? `?start=${target.start}&end=${target.end}` : "";
        chunk = await api(`/api/chunks/${target.chunk_id}${q}`);
        if (token !== this.token) return;
      }
      this.shell(doc.filename, chunk);
      if (doc.file_type === "pdf") {
        this.rects = (chunk && chunk.rects) || [];
        const page = (this.rects[0] && this.rects[0].page) || (chunk && chunk.page) || target.page || 1;
        await this.showPage(page);
      } else {
        await this.showText(chunk ? chunk.quote || { start: chunk.start, end: chunk.end } : null);
      }
    } catch (err) {
      if (token !== this.token) return;
      this.body.replaceChildren(errorBox(err));
    }
  }

  shell(title, chunk) {
    const doc = this.doc;
    this.titleEl = h("h2", { class: "viewer-title", title }, title);
    this.pager = h("div", { class: "pager" });
    this.body = h("div", { class: "viewer-body", tabindex: "0", "aria-label": "Document" });
    const where = chunk ? [chunk.page ? `Page ${chunk.page}` : null, chunk.section || null].filter(Boolean).join(" · ") : "";
    this.root.replaceChildren(
      h(
        "div",
        { class: "viewer-head" },
        this.titleEl,
        h(
          "div",
          { class: "row" },
          doc ? h("a", { class: "button ghost small", href: `/api/documents/${doc.id}/file`, download: doc.filename, testid: "download" }, "Download") : null,
          h("button", { type: "button", class: "ghost small", "aria-label": "Close the viewer", testid: "viewer-close", onclick: () => this.close() }, "✕"),
        ),
      ),
      where ? h("div", { class: "muted small viewer-where" }, where) : null,
      this.pager,
      this.body,
    );
  }

  pageCount() {
    if (this.pdf) return this.pdf.numPages;
    return Number((this.doc && this.doc.metadata && this.doc.metadata.page_count) || 0) || 1;
  }

  renderPager() {
    const n = this.pageCount();
    this.pager.replaceChildren(
      h("button", { type: "button", class: "ghost small", disabled: this.page <= 1, "aria-label": "Previous page", testid: "page-prev", onclick: () => this.showPage(this.page - 1) }, "‹ Prev"),
      h("span", { testid: "page-number", "aria-live": "polite" }, `Page ${this.page} of ${n}`),
      h("button", { type: "button", class: "ghost small", disabled: this.page >= n, "aria-label": "Next page", testid: "page-next", onclick: () => this.showPage(this.page + 1) }, "Next ›"),
    );
  }

  async showPage(page) {
    const token = this.token;
    this.page = Math.max(1, Math.min(page, this.pageCount()));
    this.renderPager();
    const frame = h("div", { class: "page", testid: "page", dataset: { page: String(this.page) } });
    this.body.replaceChildren(frame);
    const width = Math.max(260, Math.min(this.body.clientWidth - 16 || 600, 1400));
    let size = null;
    try {
      const lib = await loadPdfjs();
      if (!this.pdf) {
        this.pdf = await lib.getDocument({ url: `/api/documents/${this.doc.id}/file`, isEvalSupported: false, enableXfa: false, standardFontDataUrl: STANDARD_FONTS }).promise;
        this.renderPager();
      }
      const p = await this.pdf.getPage(this.page);
      const base = p.getViewport({ scale: 1 });
      const scale = width / base.width;
      const vp = p.getViewport({ scale: scale * (window.devicePixelRatio || 1) });
      const canvas = h("canvas", { class: "page-img", "aria-label": `Page ${this.page}` });
      canvas.width = Math.floor(vp.width);
      canvas.height = Math.floor(vp.height);
      canvas.style.width = `${Math.floor(width)}px`;
      frame.append(canvas);
      await p.render({ canvasContext: canvas.getContext("2d"), viewport: vp }).promise;
      size = { width: base.width, height: base.height };
    } catch (err) {
      if (token !== this.token) return;
      // The server renders the page when PDF.js cannot.
      console.warn("PDF.js failed, using the server's page image", err);
      frame.replaceChildren(h("img", { class: "page-img", alt: `Page ${this.page}`, src: `/api/documents/${this.doc.id}/pages/${this.page}.png?scale=2` }));
    }
    if (token !== this.token) return;
    this.drawHighlights(frame, size);
  }

  drawHighlights(frame, size) {
    const onPage = this.rects.find((r) => r.page === this.page);
    if (!onPage) return;
    const w = onPage.width || (size && size.width);
    const ht = onPage.height || (size && size.height);
    let first = null;
    for (const [x0, y0, x1, y1] of onPage.rects) {
      const mark = h("div", { class: "highlight", testid: "highlight" });
      mark.style.left = `${(x0 / w) * 100}%`;
      mark.style.top = `${(y0 / ht) * 100}%`;
      mark.style.width = `${((x1 - x0) / w) * 100}%`;
      mark.style.height = `${((y1 - y0) / ht) * 100}%`;
      frame.append(mark);
      first = first || mark;
    }
    if (first) requestAnimationFrame(() => first.scrollIntoView({ block: "center", behavior: "instant" }));
  }

  async showText(quote) {
    const token = this.token;
    this.pager.replaceChildren();
    let start = 0;
    if (quote && quote.start > TEXT_WINDOW / 2) start = Math.max(0, quote.start - TEXT_WINDOW / 4);
    const win = await api(`/api/documents/${this.doc.id}/text?start=${start}`);
    if (token !== this.token) return;
    const text = win.text;
    const box = h("div", { class: "doc-text", testid: "doc-text" });
    if (quote && quote.end > quote.start && quote.start >= win.start && quote.end <= win.end) {
      const a = quote.start - win.start;
      const b = quote.end - win.start;
      const mark = h("mark", { class: "highlight", testid: "highlight" }, text.slice(a, b));
      box.append(win.start > 0 ? "…" : "", text.slice(0, a), mark, text.slice(b), win.end < win.length ? "…" : "");
      this.body.replaceChildren(box);
      requestAnimationFrame(() => mark.scrollIntoView({ block: "center", behavior: "instant" }));
    } else {
      box.append(text, win.end < win.length ? "…" : "");
      this.body.replaceChildren(box);
    }
  }
}
