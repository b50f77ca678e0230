// The search page: query, mode, ranked passages with highlighted snippets; a click opens
// the passage in the viewer.
import { api, errorBox, h } from "./api.js";
import { snippetFragment } from "./markdown.js";

export class SearchView {
  constructor(root, ctx) {
    this.root = root;
    this.ctx = ctx;
    this.input = h("input", { type: "search", testid: "search-input", placeholder: "Search your sources…", "aria-label": "Search query", maxlength: 2000 });
    this.mode = h(
      "select",
      { "aria-label": "Search mode", testid: "search-mode" },
      h("option", { value: "hybrid" }, "Hybrid"),
      h("option", { value: "semantic" }, "Semantic (meaning)"),
      h("option", { value: "lexical" }, "Lexical (exact words)"),
    );
    this.results = h("ol", { class: "results", "aria-label": "Results" });
    this.status = h("div", { class: "muted small", "aria-live": "polite" });
    this.root.replaceChildren(
      h(
        "form",
        { class: "search-form", role: "search", onsubmit: (e) => { e.preventDefault(); this.run(); } },
        this.input,
        this.mode,
        h("button", { type: "submit", class: "primary", testid: "search-submit" }, "Search"),
      ),
      this.status,
      this.results,
    );
    this.results.append(h("li", { class: "empty" }, "Find every passage about a topic across the ticked sources. Hybrid mixes exact words with meaning; results open at their page."));
  }

  focus() {
    this.input.focus();
  }

  async run() {
    const query = this.input.value.trim();
    if (!query) return;
    const ids = this.ctx.filterIds();
    if (ids && !ids.length) {
      this.results.replaceChildren(errorBox({ message: "No source is ticked.", hint: "Tick at least one source on the left." }));
      return;
    }
    // No top_k: the server's search.top_k (Settings page) decides how many passages come.
    const body = { query, mode: this.mode.value, notebook_id: this.ctx.notebook.id };
    if (ids) body.filters = { document_ids: ids };
    this.status.textContent = "Searching…";
    try {
      const res = await api("/api/search", { method: "POST", body });
      this.status.textContent = `${res.results.length} passage${res.results.length === 1 ? "" : "s"} · ${Math.round(Object.values(res.timings || {}).reduce((a, b) => Math.max(a, b), 0))} ms`;
      this.results.replaceChildren(
        ...res.results.map((r) =>
          h(
            "li",
            {},
            h(
              "button",
              { type: "button", class: "result", testid: "search-result", onclick: () => this.ctx.openSource({ document_id: r.document_id, chunk_id: r.chunk_id, start: r.start, end: r.end, page: r.page, filename: r.filename }) },
              h("div", { class: "result-head" }, h("strong", {}, r.filename), r.page ? h("span", { class: "muted small" }, ` · page ${r.page}`) : null, h("span", { class: "muted small score" }, Number(r.score).toFixed(3))),
              r.section ? h("div", { class: "muted small" }, r.section) : null,
              h("div", { class: "snippet" }, snippetFragment(r.snippet)),
            ),
          ),
        ),
      );
      if (!res.results.length) this.results.append(h("li", { class: "empty" }, "Nothing matched. Try other words, the Semantic mode, or tick more sources."));
    } catch (err) {
      this.status.textContent = "";
      this.results.replaceChildren(errorBox(err));
    }
  }
}
