// The settings page (#/settings): server health, models (chat switch, embedding switch with
// its reindex job, Ollama pull), the configuration that changes at runtime, and notebook
// export / import. Every failure is shown as the API's message and hint.
import { api, confirmDialog, errorBox, followJob, h, postEvents } from "./api.js";
import { ArchivePanel } from "./archive.js";
import { ConfigForm } from "./config_form.js";

const ROLE_LABEL = {
  database: "Database",
  vectors: "Vector store",
  embeddings: "Embedding model",
  broker: "Event broker",
  llm: "Chat model",
  jobs: "Background jobs",
};
// Facts worth showing per role, in this order, when the health report has them.
const FACTS = ["provider", "backend", "dialect", "model", "dimensions", "context_window", "runner", "queued", "running", "vectors", "version", "server_version", "client_version"];

export class SettingsView {
  constructor(root) {
    this.root = root;
    this.closed = false;
    this.health = h("section", { class: "card", testid: "settings-health", "aria-labelledby": "h-health" });
    this.models = h("section", { class: "card", testid: "settings-models", "aria-labelledby": "h-models" });
    const config = h("section", { class: "card", testid: "settings-config", "aria-labelledby": "h-config" });
    const archive = h("section", { class: "card", testid: "settings-notebooks", "aria-labelledby": "h-archive" });
    root.replaceChildren(
      h(
        "main",
        { class: "settings", testid: "settings" },
        h("header", { class: "home-head" }, h("a", { href: "#/", class: "ghost small back" }, "← Notebooks"), h("h1", {}, "Settings")),
        this.health,
        this.models,
        archive,
        config,
      ),
    );
    this.config = new ConfigForm(config);
    this.archive = new ArchivePanel(archive);
    this.loadHealth();
    this.loadModels();
  }

  destroy() {
    this.closed = true;
    this.archive.destroy();
  }

  // --- health -----------------------------------------------------------------------------
  async loadHealth() {
    const head = h("div", { class: "panel-head" }, h("h2", { id: "h-health" }, "Server health"), h("button", { type: "button", class: "ghost small", testid: "health-refresh", onclick: () => this.loadHealth() }, "Refresh"));
    let body;
    try {
      // 503 still carries the report (a required backend is down): read it either way.
      const res = await fetch("/health");
      body = await res.json();
    } catch {
      this.health.replaceChildren(head, errorBox({ message: "The StudyRAG server cannot be reached.", hint: "Check that `make run` (or `studyrag serve`) is still running, then reload." }));
      return;
    }
    const overall = body.status || "unknown";
    const rows = Object.entries(body)
      .filter(([role, v]) => role !== "auth" && v && typeof v === "object" && !Array.isArray(v))
      .map(([role, v]) => this.healthRow(role, v));
    this.health.replaceChildren(
      head,
      h("p", { class: `overall ${overall}`, testid: "health-overall" }, overallText(overall, body)),
      h("ul", { class: "health-list", "aria-label": "Backends" }, rows),
      body.auth ? accessLine(body.auth) : null,
    );
  }

  healthRow(role, v) {
    const status = v.status || (role === "jobs" ? "ok" : "unknown");
    const facts = FACTS.filter((k) => v[k] !== undefined && v[k] !== null && v[k] !== "").map((k) => `${k.replace(/_/g, " ")} ${v[k]}`);
    return h(
      "li",
      { class: "health-row", testid: "health-row", dataset: { role, status } },
      h("span", { class: "health-name" }, ROLE_LABEL[role] || role, v.required === false ? h("span", { class: "muted small" }, " (optional)") : null),
      h("span", { class: `pill ${status}`, testid: "health-status" }, status === "ok" ? "OK" : status),
      facts.length ? h("span", { class: "muted small health-facts" }, facts.join(" · ")) : null,
      v.error ? errorBox(v.error) : null,
    );
  }

  // --- models -----------------------------------------------------------------------------
  async loadModels() {
    let res;
    try {
      res = await api("/api/models");
    } catch (err) {
      this.models.replaceChildren(h("h2", { id: "h-models" }, "Models"), errorBox(err));
      return;
    }
    if (this.closed) return;
    this.modelList = res;
    const chatActive = res.chat.find((m) => m.active);
    const embActive = res.embedding.find((m) => m.active);
    this.chatMsg = h("div", { class: "msg", testid: "chat-model-message", "aria-live": "polite" });
    this.embMsg = h("div", { class: "msg", testid: "embedding-message", "aria-live": "polite" });
    this.chatSelect = modelSelect(res.chat, "chat-model-select", "Chat model");
    this.embSelect = modelSelect(res.embedding, "embedding-model-select", "Embedding model");
    this.chatBtn = h("button", { type: "button", class: "primary", testid: "chat-model-switch", onclick: () => this.switchChat() }, "Use this model");
    this.embBtn = h("button", { type: "button", class: "primary", testid: "embedding-model-switch", onclick: () => this.switchEmbedding() }, "Switch and re-embed");
    this.embJob = h("div", { class: "job", testid: "embedding-job" });
    const unreachable = res.providers.filter((p) => !p.reachable);
    this.models.replaceChildren(
      h("h2", { id: "h-models" }, "Models"),
      h(
        "div",
        { class: "model-block" },
        h("h3", {}, "Chat model"),
        h("p", { class: "small" }, "Answers: ", h("strong", { testid: "chat-model-current" }, chatActive ? `${chatActive.name} (${chatActive.provider})` : "none")),
        h("div", { class: "row" }, this.chatSelect, this.chatBtn),
        this.chatMsg,
      ),
      h(
        "div",
        { class: "model-block" },
        h("h3", {}, "Embedding model"),
        h("p", { class: "small" }, "Search and ingestion: ", h("strong", { testid: "embedding-model-current" }, embActive ? `${embActive.name} (${embActive.provider})` : "none")),
        h("p", { class: "muted small" }, "Switching re-embeds every document of every notebook; search keeps using the current model until that is done."),
        h("div", { class: "row" }, this.embSelect, this.embBtn),
        this.embJob,
        this.embMsg,
      ),
      unreachable.length
        ? h(
            "div",
            { class: "model-block" },
            h("h3", {}, "Other providers"),
            unreachable.map((p) => {
              // The provider in use failing is an error; one merely not installed is a note.
              const inUse = (p.role === "chat" ? chatActive : embActive)?.provider === p.provider;
              const err = p.error || { message: `${p.provider} did not answer.` };
              return h(
                "div",
                { class: "provider", testid: "provider-error", dataset: { provider: p.provider, role: p.role } },
                inUse ? errorBox(err) : h("p", { class: "muted small" }, `${p.provider} (${p.role} models): `, err.message),
              );
            }),
          )
        : null,
      this.pull(chatActive, res.providers),
    );
    if (res.switching_job_id) this.followEmbedding(res.switching_job_id);
  }

  async switchChat() {
    const m = this.modelList.chat[Number(this.chatSelect.value)];
    if (!m) return;
    this.chatBtn.disabled = true;
    this.chatMsg.replaceChildren(h("span", { class: "muted small" }, `Loading ${m.name}…`));
    try {
      const res = await api("/api/models/switch", { method: "POST", body: { role: "chat", provider: m.provider, model: m.name } });
      await this.loadModels();
      this.chatMsg.replaceChildren(h("span", { class: "ok small" }, `Answers now come from ${res.name} (${res.provider}).`));
      this.loadHealth();
    } catch (err) {
      this.chatMsg.replaceChildren(errorBox(err));
    } finally {
      this.chatBtn.disabled = false;
    }
  }

  async switchEmbedding() {
    const m = this.modelList.embedding[Number(this.embSelect.value)];
    if (!m) return;
    if (m.active) {
      this.embMsg.replaceChildren(h("span", { class: "muted small" }, `${m.name} is already the embedding model.`));
      return;
    }
    if (!(await confirmDialog(`Re-embed every document with ${m.name}? It runs in the background; search keeps working with the current model until it is done.`, { confirm: "Switch", danger: false }))) return;
    this.embMsg.replaceChildren();
    try {
      const res = await api("/api/models/switch", { method: "POST", body: { role: "embedding", provider: m.provider, model: m.name } });
      if (res.job_id) this.followEmbedding(res.job_id);
      else await this.loadModels();
    } catch (err) {
      this.embMsg.replaceChildren(errorBox(err));
    }
  }

  async followEmbedding(jobId) {
    if (this.embJobId === jobId) return;
    this.embJobId = jobId;
    this.embBtn.disabled = true;
    const bar = h("progress", { max: 100, value: 0, class: "bar", testid: "embedding-progress", "aria-label": "Re-embedding progress" });
    const text = h("span", { class: "small", testid: "embedding-status" }, "Starting…");
    const cancel = h("button", { type: "button", class: "ghost small", testid: "embedding-cancel", onclick: () => api(`/api/jobs/${jobId}/cancel`, { method: "POST" }).catch((err) => this.embMsg.replaceChildren(errorBox(err))) }, "Cancel");
    this.embJob.replaceChildren(h("div", { class: "row" }, text, cancel), bar);
    const show = (p) => {
      bar.value = Math.round(Number(p.progress || 0));
      const phase = p.phase === "catching_up" ? "Catching up" : "Re-embedding";
      text.textContent = p.total ? `${phase}: ${p.done} of ${p.total} documents (${Math.round(Number(p.progress || 0))}%)` : `${phase}…`;
    };
    try {
      const job = await followJob(jobId, (type, ev) => {
        if (type === "job_progress") show(ev);
        else if (type === "snapshot") show({ progress: ev.progress, ...(ev.metadata || {}) });
      });
      if (this.closed) return;
      this.embJobId = null;
      this.loadHealth();
      await this.loadModels();
      if (job.status === "completed") this.embMsg.replaceChildren(h("span", { class: "ok small", testid: "embedding-done" }, "Re-embedding done: search and ingestion use the new model."));
      else if (job.status === "cancelled") this.embMsg.replaceChildren(h("span", { class: "muted small" }, "Cancelled: the previous embedding model stays in use."));
      else this.embMsg.replaceChildren(errorBox({ message: `The switch failed: ${job.error || "unknown error"}.`, hint: "The previous embedding model stays in use; check the server log." }));
    } catch (err) {
      this.embJobId = null;
      this.embMsg.replaceChildren(errorBox(err));
    }
  }

  /** The pull block, kept across reloads of the list (its progress and result stay). */
  pull(chatActive, providers) {
    const provider = chatActive ? chatActive.provider : "none";
    if (!this.pullEl || this.pullProvider !== provider) this.pullEl = this.pullBlock(chatActive, providers);
    this.pullProvider = provider;
    return this.pullEl;
  }

  pullBlock(chatActive, providers) {
    const provider = chatActive ? chatActive.provider : "none";
    const title = h("h3", {}, "Download a model with Ollama");
    if (provider !== "ollama") {
      return h(
        "div",
        { class: "model-block" },
        title,
        h(
          "p",
          { class: "small", testid: "pull-unavailable" },
          `Not available: ${provider === "none" ? "this server has no chat model" : `this server answers with ${provider === "llamacpp" ? "the embedded llama.cpp model" : `the ${provider} provider`}`}, and only Ollama downloads models. `,
          "To use Ollama, install it and run ",
          h("code", {}, "ollama serve"),
          "; its models then appear in the list above. An embedded model needs no download: put a ",
          h("code", {}, ".gguf"),
          " file in the data directory's ",
          h("code", {}, "models/"),
          " folder.",
        ),
      );
    }
    const status = providers.find((p) => p.provider === "ollama" && p.role === "chat");
    const name = h("input", { type: "text", testid: "pull-name", placeholder: "e.g. llama3.2", "aria-label": "Ollama model name", maxlength: 300, required: true });
    const btn = h("button", { type: "submit", class: "primary", testid: "pull-start" }, "Pull");
    const bar = h("progress", { max: 100, value: 0, class: "bar", testid: "pull-progress", "aria-label": "Download progress", hidden: true });
    const text = h("div", { class: "small", testid: "pull-status", "aria-live": "polite" });
    const msg = h("div", { class: "msg" });
    const form = h(
      "form",
      {
        class: "row",
        onsubmit: async (e) => {
          e.preventDefault();
          const model = name.value.trim();
          if (!model) return;
          btn.disabled = true;
          msg.replaceChildren();
          bar.hidden = false;
          bar.value = 0;
          text.textContent = "Asking Ollama…";
          try {
            let failed = null;
            await postEvents("/api/models/pull", { name: model }, (event, data) => {
              if (event === "progress") {
                if (data.total) bar.value = Math.round((100 * Number(data.completed || 0)) / Number(data.total));
                text.textContent = data.total ? `${data.status} (${bar.value}%)` : data.status || "";
              } else if (event === "done") {
                bar.value = 100;
                text.textContent = `${model} is downloaded.`;
              } else if (event === "error") {
                failed = data;
              }
            });
            if (failed) throw failed;
            this.loadModels();
          } catch (err) {
            bar.hidden = true;
            text.textContent = "";
            msg.replaceChildren(errorBox(err));
          } finally {
            btn.disabled = false;
          }
        },
      },
      name,
      btn,
    );
    return h(
      "div",
      { class: "model-block", testid: "pull" },
      title,
      status && !status.reachable ? errorBox(status.error || { message: "Ollama is not reachable." }) : null,
      form,
      bar,
      text,
      msg,
    );
  }
}

function overallText(status, body) {
  if (status === "ok") return `Everything works (StudyRAG ${body.version || ""}).`;
  if (status === "degraded") return "Degraded: the chat model is down. Documents and search still work.";
  const down = (body.down || []).map((r) => ROLE_LABEL[r] || r).join(", ");
  return `Unavailable: ${down || "a required backend"} is down.`;
}

function modelSelect(models, testid, label) {
  const select = h("select", { testid, "aria-label": label });
  models.forEach((m, i) => {
    const size = !m.size ? "" : m.size < 1e6 ? ` · ${Math.max(1, Math.round(m.size / 1e3))} kB` : ` · ${Math.round(m.size / 1e6)} MB`;
    select.append(h("option", { value: String(i), selected: m.active, disabled: !m.available }, `${m.name} (${m.provider})${size}${m.active ? " · current" : ""}${m.available ? "" : " · not available"}`));
  });
  return select;
}

// Who may use the server: the accounts mode, and its warning (a local server on an open address).
function accessLine(auth) {
  const mode = auth.mode === "multi-user" ? "multi-user (everyone signs in)" : "local (no sign-in; this computer only)";
  return h(
    "p",
    { class: `muted small${auth.warning ? " warn" : ""}`, testid: "health-access" },
    `Access: ${mode}`,
    auth.warning ? h("strong", {}, ` — ${auth.warning}`) : null,
  );
}
