// StudyRAG web interface: hash routes (#/ home, #/settings, #/n/<notebook>[/c/<conversation>|/search]).
import { api, confirmDialog, errorBox, h, plural, promptDialog, relTime } from "./js/api.js";
import { ChatView } from "./js/chat.js";
import { logoutButton, renderLogin, renderSetup, whoAmI } from "./js/login.js";
import { SearchView } from "./js/search.js";
import { SourcesPanel } from "./js/sources.js";
import { Viewer } from "./js/viewer.js";

const app = document.getElementById("app");
const banner = document.getElementById("banner");
let current = null; // the open notebook workspace
let settings = null; // the settings page, while it is shown
let me = null; // GET /api/auth/me: {mode, user, scopes, via}; null until signed in

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "settings") return { view: "settings" };
  if (parts[0] === "setup" && parts[1]) return { view: "setup", token: parts[1] };
  if (parts[0] === "n" && parts[1]) return { view: "notebook", nb: parts[1], conv: parts[2] === "c" ? parts[3] : null, search: parts[2] === "search" };
  return { view: "home" };
}

function signedIn() {
  me = null;
  location.hash = "#/";
  route();
}

async function route() {
  const r = parseRoute();
  app.dataset.view = r.view;
  if (settings) settings.destroy();
  settings = null;
  if (r.view === "setup") {
    if (current) current.destroy();
    current = null;
    return renderSetup(app, r.token, signedIn);
  }
  if (!me) {
    // A local server answers at once (mode "local"); a multi-user one wants a login.
    try {
      me = await whoAmI();
    } catch (err) {
      return app.replaceChildren(h("main", { class: "home" }, errorBox(err)));
    }
    if (!me) return renderLogin(app, signedIn);
  }
  if (r.view === "home" || r.view === "settings") {
    if (current) current.destroy();
    current = null;
    if (r.view === "settings") {
      document.title = "Settings · StudyRAG";
      // Loaded when first opened: the notebook and chat views do not wait for its code.
      const { SettingsView } = await import("./js/settings.js");
      if (parseRoute().view !== "settings" || settings) return settings;
      settings = new SettingsView(app);
      return settings;
    }
    return renderHome();
  }
  if (current && current.nb.id === r.nb) return current.go(r);
  if (current) current.destroy();
  current = null;
  try {
    const nb = await api(`/api/notebooks/${encodeURIComponent(r.nb)}`);
    current = new Workspace(nb);
    current.go(r);
  } catch (err) {
    app.replaceChildren(h("main", { class: "home" }, errorBox(err), h("a", { href: "#/", class: "button" }, "Back to notebooks")));
  }
}

// --- home -----------------------------------------------------------------------------------
async function renderHome() {
  document.title = "StudyRAG";
  const list = h("ul", { class: "notebooks", "aria-label": "Notebooks" });
  const errors = h("div", { class: "errors" });
  const form = h("form", { class: "new-notebook", hidden: true, onsubmit: (e) => { e.preventDefault(); create(); } });
  const name = h("input", { type: "text", testid: "notebook-name-input", placeholder: "e.g. Biology 101", "aria-label": "Notebook name", maxlength: 200, required: true });
  form.append(name, h("button", { type: "submit", class: "primary", testid: "notebook-create" }, "Create"), h("button", { type: "button", class: "ghost", onclick: () => { form.hidden = true; } }, "Cancel"));
  const newBtn = h("button", { type: "button", class: "primary", testid: "notebook-new", onclick: () => { form.hidden = false; name.focus(); } }, "New notebook");
  app.replaceChildren(
    h(
      "main",
      { class: "home" },
      h(
        "header",
        { class: "home-head" },
        h("h1", {}, "Your notebooks"),
        h(
          "span",
          { class: "row home-actions" },
          settingsLink(),
          newBtn,
          me && me.via === "session" ? logoutButton(me, () => { me = null; route(); }) : null,
        ),
      ),
      form,
      errors,
      list,
    ),
  );

  async function create() {
    try {
      const nb = await api("/api/notebooks", { method: "POST", body: { name: name.value.trim() } });
      location.hash = `#/n/${nb.id}`;
    } catch (err) {
      errors.replaceChildren(errorBox(err));
    }
  }

  async function load() {
    try {
      const res = await api("/api/notebooks");
      list.replaceChildren(...res.items.map(item));
      const onlyEmptyDefault = res.items.every((n) => n.is_default && !n.documents && !n.conversations);
      if (onlyEmptyDefault) {
        list.append(
          h(
            "li",
            { class: "empty" },
            h("h3", {}, "Welcome to StudyRAG"),
            h("p", {}, "A notebook holds the documents of one course or project. Create one, add your PDFs and notes, then ask questions: every answer cites the passage it comes from."),
          ),
        );
      }
    } catch (err) {
      errors.replaceChildren(errorBox(err));
    }
  }

  function item(nb) {
    return h(
      "li",
      { class: "notebook-item", testid: "notebook-item", dataset: { notebookId: nb.id } },
      h(
        "a",
        { href: `#/n/${nb.id}`, class: "notebook-link" },
        h("strong", {}, nb.name),
        h("span", { class: "muted small" }, `${plural(nb.documents, "source")} · ${plural(nb.conversations, "chat")} · last used ${relTime(nb.updated_at)}`),
      ),
      h(
        "span",
        { class: "actions" },
        nb.role && nb.role !== "owner" ? h("span", { class: "badge", testid: "notebook-role" }, `shared · ${nb.role}`) : null,
        nb.role && nb.role !== "owner" ? null : h("button", { type: "button", class: "ghost small", testid: "notebook-rename", "aria-label": `Rename ${nb.name}`, onclick: () => rename(nb) }, "Rename"),
        nb.is_default || (nb.role && nb.role !== "owner") ? null : h("button", { type: "button", class: "ghost small", testid: "notebook-delete", "aria-label": `Delete ${nb.name}`, onclick: () => remove(nb) }, "Delete"),
      ),
    );
  }

  async function rename(nb) {
    const value = await promptDialog("New name", nb.name);
    if (!value) return;
    try {
      await api(`/api/notebooks/${nb.id}`, { method: "PUT", body: { name: value } });
      load();
    } catch (err) {
      errors.replaceChildren(errorBox(err));
    }
  }

  async function remove(nb) {
    if (!(await confirmDialog(`Delete the notebook “${nb.name}” with its ${plural(nb.documents, "source")} and ${plural(nb.conversations, "chat")}? This cannot be undone.`))) return;
    try {
      await api(`/api/notebooks/${nb.id}`, { method: "DELETE" });
      load();
    } catch (err) {
      errors.replaceChildren(errorBox(err));
    }
  }

  await load();
}

// --- one notebook ---------------------------------------------------------------------------
class Workspace {
  constructor(nb) {
    this.nb = nb;
    document.title = `${nb.name} · StudyRAG`;
    this.convs = [];
    this.q = "";
    const sourcesEl = h("section", { class: "panel sources-panel", "aria-label": "Sources" });
    this.convEl = h("section", { class: "panel chats-panel", "aria-label": "Chats" });
    this.main = h("main", { class: "main" });
    this.viewerEl = h("aside", { class: "viewer", testid: "source-viewer", hidden: true, "aria-label": "Source viewer" });
    this.tabs = h("nav", { class: "tabs", "aria-label": "Views" });
    app.replaceChildren(
      h(
        "div",
        { class: "workspace" },
        h(
          "header",
          { class: "topbar" },
          h("a", { href: "#/", class: "ghost small back", "aria-label": "All notebooks" }, "← Notebooks"),
          h("h1", { class: "nb-title", title: nb.name }, nb.name),
          this.tabs,
          settingsLink(),
        ),
        h("div", { class: "columns" }, h("div", { class: "sidebar" }, sourcesEl, this.convEl), this.main, this.viewerEl),
      ),
    );
    this.viewer = new Viewer(this.viewerEl);
    this.sources = new SourcesPanel(sourcesEl, nb, {
      onChange: () => this.chat && !this.chat.messages.length && this.chat.renderEmpty(),
      onOpen: (d) => this.openSource({ document_id: d.id, filename: d.filename, page: 1 }),
    });
    this.ctx = {
      notebook: nb,
      filterIds: () => this.sources.filterIds(),
      sourcesReady: () => this.sources.completedCount(),
      openSource: (t) => this.openSource(t),
      onConversation: (conv, created) => this.onConversation(conv, created),
    };
    this.buildConvs();
    this.loadConvs();
  }

  destroy() {
    this.sources.destroy();
    if (this.chat) this.chat.destroy();
  }

  openSource(target) {
    this.viewer.open(target);
  }

  go(r) {
    this.route = r;
    this.tabs.replaceChildren(
      h("a", { href: `#/n/${this.nb.id}${this.activeConv ? `/c/${this.activeConv}` : ""}`, class: r.search ? "tab" : "tab active", "aria-current": r.search ? null : "page" }, "Chat"),
      h("a", { href: `#/n/${this.nb.id}/search`, class: r.search ? "tab active" : "tab", testid: "tab-search", "aria-current": r.search ? "page" : null }, "Search"),
    );
    if (r.search) {
      if (this.chat) this.chat.destroy();
      this.chat = null;
      this.searchView = new SearchView(this.main, this.ctx);
      this.searchView.focus();
      return;
    }
    this.searchView = null;
    if (this.chat && this.chat.conv && this.chat.conv.id === r.conv) return;
    if (this.chat && !this.chat.conv && r.conv && this.pendingOpen === r.conv) return; // just created
    if (this.chat) this.chat.destroy();
    this.chat = new ChatView(this.main, this.ctx);
    this.activeConv = r.conv;
    this.renderConvs();
    if (r.conv) {
      api(`/api/chat/conversations/${r.conv}`)
        .then((conv) => this.chat && this.chat.open(conv))
        .catch((err) => this.main.prepend(errorBox(err)));
    }
    this.chat.input.focus();
  }

  onConversation(conv, created) {
    const i = this.convs.findIndex((c) => c.id === conv.id);
    if (i >= 0) this.convs[i] = conv;
    else this.convs.unshift(conv);
    if (created) {
      this.activeConv = conv.id;
      this.pendingOpen = conv.id;
      history.replaceState(null, "", `#/n/${this.nb.id}/c/${conv.id}`);
      this.route = { ...this.route, conv: conv.id };
    }
    this.renderConvs();
  }

  buildConvs() {
    this.convSearch = h("input", { type: "search", placeholder: "Find a chat by title", "aria-label": "Find a chat by title", testid: "conversation-search", oninput: () => { this.q = this.convSearch.value.trim(); clearTimeout(this.qTimer); this.qTimer = setTimeout(() => this.loadConvs(), 200); } });
    this.convList = h("ul", { class: "conv-list", "aria-label": "Chats" });
    this.convErrors = h("div", { class: "errors" });
    this.convEl.replaceChildren(
      h("div", { class: "panel-head" }, h("h2", {}, "Chats"), h("a", { class: "button ghost small", href: `#/n/${this.nb.id}`, testid: "conversation-new", onclick: () => { this.activeConv = null; if (this.chat && this.chat.conv) { this.chat.destroy(); this.chat = null; } } }, "+ New chat")),
      this.convSearch,
      this.convErrors,
      this.convList,
    );
  }

  async loadConvs() {
    try {
      const q = this.q ? `&q=${encodeURIComponent(this.q)}` : "";
      const res = await api(`/api/chat/conversations?notebook_id=${this.nb.id}&limit=100${q}`);
      this.convs = res.items;
      this.renderConvs();
    } catch (err) {
      this.convErrors.replaceChildren(errorBox(err));
    }
  }

  renderConvs() {
    const items = this.convs.filter((c) => !this.q || (c.title || "").toLowerCase().includes(this.q.toLowerCase()));
    this.convList.replaceChildren(
      ...items.map((c) =>
        h(
          "li",
          { class: c.id === this.activeConv ? "conv active" : "conv", testid: "conversation-item" },
          h("a", { href: `#/n/${this.nb.id}/c/${c.id}`, class: "conv-link", title: c.title, "aria-current": c.id === this.activeConv ? "page" : null }, c.title || "Untitled chat"),
          h(
            "span",
            { class: "actions" },
            h("button", { type: "button", class: "ghost small", "aria-label": `Rename chat ${c.title}`, onclick: () => this.renameConv(c) }, "✎"),
            h("button", { type: "button", class: "ghost small", "aria-label": `Delete chat ${c.title}`, onclick: () => this.deleteConv(c) }, "✕"),
          ),
        ),
      ),
    );
    if (!items.length) this.convList.append(h("li", { class: "empty small" }, this.q ? "No chat has this in its title." : "No chats yet: ask a question to start one."));
  }

  async renameConv(c) {
    const title = await promptDialog("Chat title", c.title);
    if (!title) return;
    try {
      this.onConversation(await api(`/api/chat/conversations/${c.id}`, { method: "PUT", body: { title } }), false);
    } catch (err) {
      this.convErrors.replaceChildren(errorBox(err));
    }
  }

  async deleteConv(c) {
    if (!(await confirmDialog(`Delete the chat “${c.title}”?`))) return;
    try {
      await api(`/api/chat/conversations/${c.id}`, { method: "DELETE" });
      this.convs = this.convs.filter((x) => x.id !== c.id);
      if (this.activeConv === c.id) location.hash = `#/n/${this.nb.id}`;
      this.renderConvs();
    } catch (err) {
      this.convErrors.replaceChildren(errorBox(err));
    }
  }
}

function settingsLink() {
  return h("a", { href: "#/settings", class: "button ghost small", testid: "settings-open" }, h("span", { "aria-hidden": "true" }, "⚙"), "Settings");
}

// --- health ---------------------------------------------------------------------------------
async function checkHealth() {
  try {
    const res = await api("/health");
    if (res.llm && res.llm.status !== "ok") {
      banner.replaceChildren(errorBox({ message: `The chat model is not reachable (${res.llm.provider || "model"}): ${res.llm.error || res.llm.status}.`, hint: "Search still works. Start the model server (e.g. `ollama serve`) or restart with the embedded model: `make run`." }));
      banner.hidden = false;
    } else if (!res.llm) {
      banner.replaceChildren(errorBox({ message: "This server runs without a chat model.", hint: "Search works; to chat, restart it with `make run`." }));
      banner.hidden = false;
    } else {
      banner.hidden = true;
    }
  } catch (err) {
    banner.replaceChildren(errorBox(err));
    banner.hidden = false;
  }
}

window.addEventListener("hashchange", route);
// Esc closes the viewer (in the question box it stops the answer instead).
document.addEventListener("keydown", (e) => {
  if (e.key !== "Escape" || !current || current.viewerEl.hidden) return;
  if (e.target && e.target.dataset && e.target.dataset.testid === "chat-input") return;
  if (document.querySelector("dialog[open]")) return;
  current.viewer.close();
});
window.addEventListener("unhandledrejection", (e) => {
  banner.replaceChildren(errorBox(e.reason || "Something went wrong.", { onDismiss: () => { banner.hidden = true; } }));
  banner.hidden = false;
});
checkHealth();
route();
