// The configuration a running server can change (GET/PUT /api/config), as one form. The
// server validates: a refused change (CONFIG_00x) is shown next to its field, and nothing
// is saved unless every change is valid.
import { api, errorBox, h } from "./api.js";

const GROUPS = [
  ["chat", "Answers"],
  ["search", "Search"],
  ["llm", "Chat model"],
  ["embeddings", "Embedding model"],
  ["ingest", "Adding sources"],
  ["", "Logging"],
];
const WHEN = { now: "applies at once", model_load: "applies when a model is next loaded" };

export class ConfigForm {
  constructor(root) {
    this.root = root;
    this.fields = new Map(); // key -> {setting, input, error, wrap}
    this.load();
  }

  async load() {
    try {
      this.render(await api("/api/config"));
    } catch (err) {
      this.root.replaceChildren(h("h2", { id: "h-config" }, "Configuration"), errorBox(err));
    }
  }

  render(cfg, status) {
    this.fields.clear();
    this.status = h("div", { class: "msg", testid: "config-status", role: "status" });
    this.errors = h("div", { class: "errors", testid: "config-errors" });
    const groups = new Map(GROUPS.map(([k, title]) => [k, h("fieldset", { class: "config-group" }, h("legend", {}, title))]));
    for (const s of cfg.settings) {
      if (!(s.applies in WHEN)) continue; // restart-only settings and model choices: not here
      const section = s.key.includes(".") ? s.key.split(".")[0] : "";
      const group = groups.get(section) || groups.get("");
      group.append(this.field(s));
    }
    this.saveBtn = h("button", { type: "submit", class: "primary", testid: "config-save" }, "Save changes");
    const form = h(
      "form",
      { class: "config-form", novalidate: true, onsubmit: (e) => { e.preventDefault(); this.save(); } },
      [...groups.values()].filter((g) => g.children.length > 1),
      h("div", { class: "row config-actions" }, this.saveBtn, h("button", { type: "button", class: "ghost", testid: "config-reset", onclick: () => this.load() }, "Undo edits")),
    );
    this.root.replaceChildren(
      h("h2", { id: "h-config" }, "Configuration"),
      h("p", { class: "muted small" }, "What the running server can change without a restart: a change applies at once (or, where it says so, when a model is next loaded) and is saved to ", h("code", {}, cfg.path), ". Everything else is set with ", h("code", {}, "studyrag config set"), " while the server is stopped."),
      this.errors,
      form,
      this.status,
    );
    if (status) this.status.replaceChildren(status);
  }

  field(s) {
    const id = `cfg-${s.key.replace(/[^\w-]/g, "-")}`;
    const kind = kindOf(s);
    let input;
    if (kind === "bool") {
      input = h("input", { type: "checkbox", id, checked: !!s.value });
    } else if (kind === "choice") {
      input = h("select", { id }, ...s.choices.map((c) => h("option", { value: c }, c)));
      input.value = String(s.value);
    } else if (kind === "json") {
      input = h("textarea", { id, rows: 3, spellcheck: "false" });
      input.value = JSON.stringify(s.value, null, 2);
    } else {
      input = h("input", { id, type: kind === "number" ? "number" : s.secret ? "password" : "text", step: kind === "number" ? "any" : null, autocomplete: "off", spellcheck: "false" });
      input.value = s.value === null || s.value === undefined ? "" : String(s.value);
    }
    input.dataset.testid = "config-input";
    const error = h("div", { class: "field-error", testid: "config-error", id: `${id}-err`, "aria-live": "polite" });
    input.setAttribute("aria-describedby", `${id}-err ${id}-note`);
    const notes = s.applies === "now" ? [] : [WHEN[s.applies]];
    const changed = JSON.stringify(s.value) !== JSON.stringify(s.default);
    if (changed && s.default !== undefined && s.default !== null && !s.secret && kind !== "json") notes.push(`default ${s.default}`);
    if (s.source === "env") notes.push("set by an environment variable, which wins at the next start");
    const wrap = h(
      "div",
      { class: `config-field ${kind}`, testid: "config-field", dataset: { key: s.key } },
      h("label", { for: id }, h("code", {}, s.key)),
      input,
      h("div", { class: "muted small", id: `${id}-note` }, notes.join(" · ")),
      error,
    );
    this.fields.set(s.key, { setting: s, input, error, wrap, kind });
    return wrap;
  }

  /** The changed fields as {key: value}; values the server will check, never pre-judged. */
  changes() {
    const out = {};
    for (const [key, f] of this.fields) {
      const v = valueOf(f);
      const was = f.setting.value;
      if (f.kind === "text" && (was === null || was === undefined) && v === "") continue;
      if (JSON.stringify(v) !== JSON.stringify(was)) out[key] = v;
    }
    return out;
  }

  clearErrors() {
    this.errors.replaceChildren();
    for (const f of this.fields.values()) {
      f.error.replaceChildren();
      f.wrap.classList.remove("invalid");
      f.input.removeAttribute("aria-invalid");
    }
  }

  async save() {
    this.clearErrors();
    this.status.replaceChildren();
    const changes = this.changes();
    if (!Object.keys(changes).length) {
      this.status.replaceChildren(h("span", { class: "muted small" }, "Nothing changed."));
      return;
    }
    this.saveBtn.disabled = true;
    try {
      const res = await api("/api/config", { method: "PUT", body: { changes } });
      const said = [];
      if (res.applied.length) said.push(`in effect now: ${res.applied.join(", ")}`);
      if (res.on_model_load.length) said.push(`at the next model load: ${res.on_model_load.join(", ")}`);
      this.render(res, h("span", { class: "ok small" }, `Saved (${said.join("; ") || Object.keys(changes).join(", ")}).`, ...res.warnings.map((w) => h("div", { class: "muted small" }, w))));
    } catch (err) {
      this.showError(err, changes);
    } finally {
      this.saveBtn.disabled = false;
    }
  }

  showError(err, changes) {
    const d = err.details || {};
    const perField = [];
    if (Array.isArray(d.errors)) for (const e of d.errors) perField.push([e.key, e.message]);
    else if (d.key) perField.push([d.key, err.message]);
    else if (Array.isArray(d.keys)) for (const k of d.keys) perField.push([k, err.message]);
    let shown = 0;
    for (const [key, message] of perField) {
      const f = this.fields.get(key);
      if (!f) continue;
      f.error.replaceChildren(h("span", {}, `${err.code}: ${message}`));
      f.wrap.classList.add("invalid");
      f.input.setAttribute("aria-invalid", "true");
      if (!shown) f.input.focus();
      shown += 1;
    }
    // The summary says that nothing was saved, with the server's hint.
    this.errors.replaceChildren(errorBox({ message: shown ? `Nothing was saved: ${shown === 1 ? "one value was" : `${shown} values were`} refused (${Object.keys(changes).length} changed).` : err.message, hint: err.hint }));
  }
}

function kindOf(s) {
  if (Array.isArray(s.choices) && s.choices.length) return "choice";
  const v = s.value ?? s.default;
  if (typeof v === "boolean") return "bool";
  if (typeof v === "number") return "number";
  if (v !== null && typeof v === "object") return "json";
  return "text";
}

function valueOf(f) {
  const raw = f.input.value;
  if (f.kind === "bool") return f.input.checked;
  if (f.kind === "json") {
    try {
      return JSON.parse(raw);
    } catch {
      return raw; // the server says what is wrong with it
    }
  }
  if (f.kind === "number") {
    const n = Number(raw);
    return raw.trim() !== "" && Number.isFinite(n) ? n : raw;
  }
  return raw;
}
