// One conversation over /ws/chat/{id}: streamed answers (token by token, seq-checked),
// stop, resume after a reload or a lost connection, typing and messages of other clients.
import { api, errorBox, h, wsUrl } from "./api.js";
import { quoteOf, renderAnswer } from "./markdown.js";

const TYPING_IDLE_MS = 2500;

export class ChatView {
  /**
   * ctx: {notebook, filterIds(): string[]|null, openSource(target), onConversation(conv, created),
   *       sourcesReady(): number}
   */
  constructor(root, ctx) {
    this.root = root;
    this.ctx = ctx;
    this.conv = null;
    this.messages = []; // {id, role, content, status, sources, metadata, lastSeq, el}
    this.byId = new Map();
    this.generating = null; // message_id of the answer in progress
    this.typers = new Map();
    this.closed = false;
    this.queued = null;
    this.perf = (window.__studyragPerf = window.__studyragPerf || []);
    this.build();
  }

  destroy() {
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    if (this.ws) this.ws.close(1000);
  }

  build() {
    this.list = h("div", { class: "messages", role: "log", "aria-live": "polite", "aria-label": "Conversation" });
    this.typing = h("div", { class: "typing muted small", testid: "typing", "aria-live": "polite" });
    this.errors = h("div", { class: "errors" });
    this.input = h("textarea", {
      testid: "chat-input",
      rows: 2,
      placeholder: "Ask about your sources…  (Enter sends, Shift+Enter adds a line, Esc stops)",
      "aria-label": "Your question",
      onkeydown: (e) => this.onKey(e),
      oninput: () => this.onTyping(),
    });
    this.sendBtn = h("button", { type: "submit", class: "primary", testid: "send" }, "Send");
    this.stopBtn = h("button", { type: "button", class: "danger", testid: "stop", hidden: true, onclick: () => this.stop() }, "Stop");
    const form = h(
      "form",
      { class: "composer", onsubmit: (e) => { e.preventDefault(); this.send(); } },
      this.input,
      h("div", { class: "composer-actions" }, this.stopBtn, this.sendBtn),
    );
    this.root.replaceChildren(this.list, this.typing, this.errors, form);
    this.renderEmpty();
  }

  renderEmpty() {
    if (this.messages.length) return;
    const n = this.ctx.sourcesReady();
    this.list.replaceChildren(
      h(
        "div",
        { class: "empty" },
        h("h3", {}, n ? "Ask your sources" : "Add a source to start"),
        h(
          "p",
          {},
          n
            ? "Questions are answered only from the sources ticked on the left. Each claim cites its passage as a numbered chip: hover to read it, click to open the page."
            : "Drop a PDF, DOCX, Markdown, HTML or text file in Sources. When it shows Done, ask a question here.",
        ),
      ),
    );
  }

  // --- conversation ----------------------------------------------------------------------
  async open(conv) {
    this.conv = conv;
    this.messages = [];
    this.byId.clear();
    this.list.replaceChildren();
    // An answer in progress is stored (empty, "incomplete") until it ends: show it as live.
    if (conv.generation && conv.generation.message_id) this.setGenerating(conv.generation.message_id);
    await this.loadMessages();
    this.connect();
  }

  async loadMessages() {
    const page = await api(`/api/chat/conversations/${this.conv.id}/messages?order=desc&limit=100`);
    const items = page.items.slice().reverse();
    for (const m of items) {
      const mine = this.byId.get(m.id);
      if (mine && mine.id === this.generating) continue; // the stream owns it
      this.upsert(m);
    }
    this.renderEmpty();
  }

  connect() {
    if (!this.conv || this.closed) return;
    const ws = new WebSocket(wsUrl(`/ws/chat/${this.conv.id}`));
    this.ws = ws;
    this.wasConnected = this.wasConnected || false;
    ws.onmessage = (e) => this.onFrame(JSON.parse(e.data));
    ws.onclose = (e) => {
      if (this.ws !== ws || this.closed) return;
      if (e.code === 4404) {
        this.errors.replaceChildren(errorBox({ message: "This conversation was deleted." }));
        return;
      }
      this.reconnectTimer = setTimeout(() => this.connect(), 1000);
    };
  }

  sendFrame(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  onFrame(f) {
    switch (f.type) {
      case "connected": {
        const gen = f.generation;
        if (gen && gen.message_id) {
          // Sent at once: the server holds live tokens 0.2 s for a resume to take their place.
          const m = this.assistant(gen.message_id);
          if (!m.lastSeq) { m.content = ""; m.lastSeq = 0; }
          this.sendFrame({ type: "resume", message_id: gen.message_id, last_seq: m.lastSeq });
          this.setGenerating(gen.message_id);
        } else if (this.wasConnected || this.generating) {
          this.setGenerating(null);
          this.loadMessages().catch(() => {});
        }
        this.wasConnected = true;
        if (this.queued) {
          const q = this.queued;
          this.queued = null;
          this.sendFrame(q);
        }
        break;
      }
      case "ping":
        this.sendFrame({ type: "pong" });
        break;
      case "user_message":
        this.upsert(f.message);
        this.scroll();
        break;
      case "stream_start":
        this.assistant(f.message_id);
        this.setGenerating(f.message_id);
        this.perf.push({ ev: "stream_start", t: performance.now() });
        break;
      case "sources": {
        const m = this.assistant(f.message_id);
        m.sources = f.sources;
        this.paint(m);
        break;
      }
      case "stream_chunk": {
        const m = this.assistant(f.message_id);
        if (f.seq <= m.lastSeq) break; // already shown
        if (f.seq > m.lastSeq + 1) {
          this.sendFrame({ type: "resume", message_id: f.message_id, last_seq: m.lastSeq });
          break;
        }
        m.content += f.delta;
        m.lastSeq = f.seq;
        if (f.seq === 1) this.perf.push({ ev: "first_token_ws", t: performance.now() });
        this.schedulePaint(m, f.seq === 1);
        break;
      }
      case "stream_end": {
        const m = this.assistant(f.message_id);
        Object.assign(m, f.message, { lastSeq: m.lastSeq });
        if (!(f.message && f.message.metadata) && f.metadata) m.metadata = f.metadata;
        if (f.message.sources) m.sources = f.message.sources;
        if (this.generating === f.message_id) this.setGenerating(null);
        this.paint(m);
        break;
      }
      case "typing":
        this.showTyping(f.client_id, f.is_typing);
        break;
      case "conversation_updated":
        this.conv = f.conversation;
        this.ctx.onConversation(f.conversation, false);
        break;
      case "conversation_deleted":
        this.errors.replaceChildren(errorBox({ message: "This conversation was deleted in another window." }));
        this.setGenerating(null);
        break;
      case "error": {
        if (f.message_id && this.byId.has(f.message_id)) {
          const m = this.byId.get(f.message_id);
          m.status = "error";
          m.error = f;
          this.paint(m);
          if (this.generating === f.message_id) this.setGenerating(null);
        }
        if (f.error_code === "CHAT_008" && !f.message_id) {
          this.setGenerating(null);
          this.loadMessages().catch(() => {});
          break;
        }
        this.showError(f);
        break;
      }
      default:
        break;
    }
  }

  showError(f) {
    this.errors.replaceChildren(errorBox(f, { onDismiss: () => {} }));
  }

  setGenerating(id) {
    this.generating = id;
    this.stopBtn.hidden = !id;
    this.sendBtn.disabled = !!id;
    for (const m of this.messages) if (m.el) m.el.classList.toggle("streaming", m.id === id);
  }

  // --- messages ---------------------------------------------------------------------------
  upsert(msg) {
    let m = this.byId.get(msg.id);
    if (!m) {
      m = { lastSeq: 0, sources: [], metadata: {}, content: "", ...msg };
      this.byId.set(m.id, m);
      this.messages.push(m);
    } else {
      Object.assign(m, msg);
    }
    if (m.id === this.generating && m.role === "assistant") m.status = "streaming";
    this.paint(m);
    return m;
  }

  assistant(id) {
    return this.byId.get(id) || this.upsert({ id, role: "assistant", content: "", status: "streaming", sources: [] });
  }

  schedulePaint(m, first) {
    if (first) {
      // The first token is drawn at once (the next frame shows it); later ones per frame.
      this.paint(m);
      requestAnimationFrame(() => this.perf.push({ ev: "first_token_painted", t: performance.now() }));
      return;
    }
    if (m.paintQueued) return;
    m.paintQueued = true;
    requestAnimationFrame(() => {
      m.paintQueued = false;
      this.paint(m);
    });
  }

  paint(m) {
    if (!m.el) {
      if (this.list.querySelector(".empty")) this.list.replaceChildren();
      m.el = h("article", { class: `message ${m.role}`, testid: m.role === "assistant" ? "assistant-message" : "user-message", dataset: { messageId: m.id } });
      this.list.append(m.el);
    }
    m.el.classList.toggle("streaming", m.id === this.generating);
    m.el.dataset.status = m.status || "";
    if (m.role === "user") {
      m.el.replaceChildren(h("div", { class: "bubble" }, m.content));
      return;
    }
    const body = h("div", { class: "answer-body", testid: "answer-body" });
    const unverified = m.id === this.generating ? [] : unsupportedSpans(m);
    if (m.content) {
      body.append(renderAnswer(m.content, m.sources, { unverified, onCite: (s) => this.ctx.openSource(targetOf(s)), onHover: (s, chip, on) => this.hoverCard(s, chip, on) }));
    } else if (m.status !== "error") {
      body.append(h("span", { class: "muted" }, m.sources && m.sources.length ? "Writing the answer…" : "Reading your sources…"));
    }
    const parts = [body];
    if (m.status === "incomplete" && m.id !== this.generating) parts.push(h("div", { class: "muted small" }, "Stopped before the end."));
    if (m.status === "error") {
      const e = m.error || (m.metadata && m.metadata.error) || {};
      parts.push(errorBox({ message: e.message || "The answer failed.", hint: "" }));
    }
    if (unverified.length) {
      // The marks' title does not show on a touch screen: say once what they mean.
      const n = unverified.length;
      parts.push(h("div", { class: "unverified-note muted small", testid: "unverified-note" }, h("span", { class: "unverified" }, n === 1 ? "1 sentence" : `${n} sentences`), ` underlined like this ${n === 1 ? "was" : "were"} not found in the sources: check ${n === 1 ? "it" : "them"} before relying on ${n === 1 ? "it" : "them"}.`));
    }
    if (m.sources && m.sources.length) parts.push(this.sourceList(m));
    m.el.replaceChildren(...parts);
    this.scroll();
  }

  sourceList(m) {
    return h(
      "details",
      { class: "sources", open: true },
      h("summary", {}, `Sources (${m.sources.length})`),
      h(
        "ol",
        {},
        m.sources.map((s) =>
          h(
            "li",
            { class: s.cited === false ? "uncited" : "" },
            h(
              "button",
              { type: "button", class: "link source-ref", testid: "answer-source", onclick: () => this.ctx.openSource(targetOf(s)) },
              h("span", { class: "chip-index" }, String(s.index)),
              ` ${s.filename}`,
              s.page ? `, p. ${s.page}` : "",
            ),
            h("span", { class: "muted small" }, ` score ${Number(s.score).toFixed(2)}`),
            h("div", { class: "muted small excerpt" }, (quoteOf(s).text || "").slice(0, 220)),
          ),
        ),
      ),
    );
  }

  hoverCard(s, chip, on) {
    if (this.card) this.card.remove();
    this.card = null;
    if (!on) return;
    const q = quoteOf(s);
    const where = [s.filename, s.page ? `page ${s.page}` : null].filter(Boolean).join(" · ");
    const card = h(
      "div",
      { class: "cite-card", role: "tooltip", testid: "citation-card" },
      h("div", { class: "cite-where" }, where),
      s.section ? h("div", { class: "muted small" }, s.section) : null,
      h("blockquote", {}, q.text.length > 600 ? `${q.text.slice(0, 600)}…` : q.text),
      h("div", { class: "muted small" }, "Click to open the page"),
    );
    document.body.append(card);
    const r = chip.getBoundingClientRect();
    const w = Math.min(360, window.innerWidth - 16);
    card.style.width = `${w}px`;
    card.style.left = `${Math.max(8, Math.min(r.left, window.innerWidth - w - 8))}px`;
    const below = r.bottom + 6;
    card.style.top = `${below + card.offsetHeight > window.innerHeight ? Math.max(8, r.top - card.offsetHeight - 6) : below}px`;
    this.card = card;
  }

  scroll() {
    const el = this.list;
    if (el.scrollHeight - el.scrollTop - el.clientHeight < 200 || this.generating) el.scrollTop = el.scrollHeight;
  }

  // --- typing -----------------------------------------------------------------------------
  onTyping() {
    if (!this.conv) return;
    if (!this.iAmTyping) {
      this.iAmTyping = true;
      this.sendFrame({ type: "typing", is_typing: true });
    }
    clearTimeout(this.typingTimer);
    this.typingTimer = setTimeout(() => this.stopTyping(), TYPING_IDLE_MS);
  }

  stopTyping() {
    clearTimeout(this.typingTimer);
    if (this.iAmTyping) this.sendFrame({ type: "typing", is_typing: false });
    this.iAmTyping = false;
  }

  showTyping(clientId, on) {
    clearTimeout(this.typers.get(clientId));
    if (on) this.typers.set(clientId, setTimeout(() => this.showTyping(clientId, false), 6000));
    else this.typers.delete(clientId);
    const n = this.typers.size;
    this.typing.textContent = n ? (n === 1 ? "Someone else is typing…" : `${n} people are typing…`) : "";
  }

  // --- sending and stopping ---------------------------------------------------------------
  onKey(e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      this.send();
    } else if (e.key === "Escape") {
      e.preventDefault();
      this.stop();
    }
  }

  async send() {
    const text = this.input.value.trim();
    if (!text) return;
    if (this.generating) {
      this.showError({ message: "An answer is still being written.", details: { hint: "Wait for it, or press Stop (Esc)." } });
      return;
    }
    const ids = this.ctx.filterIds();
    if (ids && !ids.length) {
      this.showError({ message: "No source is ticked.", details: { hint: "Tick at least one source on the left: answers only use ticked sources." } });
      return;
    }
    this.errors.replaceChildren();
    const frame = { type: "message", content: text };
    if (ids) frame.filters = { document_ids: ids };
    this.perf.push({ ev: "send", t: performance.now() });
    this.stopTyping();
    if (!this.conv) {
      try {
        const conv = await api("/api/chat/conversations", { method: "POST", body: { notebook_id: this.ctx.notebook.id, title: text.slice(0, 80) } });
        this.queued = frame;
        this.input.value = "";
        this.ctx.onConversation(conv, true);
        await this.open(conv);
      } catch (err) {
        this.errors.replaceChildren(errorBox(err));
      }
      return;
    }
    if (this.sendFrame(frame)) this.input.value = "";
    else this.showError({ message: "Not connected to the server.", details: { hint: "Reconnecting; send again in a moment." } });
  }

  async stop() {
    if (!this.generating) return;
    if (!this.sendFrame({ type: "stop" })) {
      try {
        await api(`/api/chat/conversations/${this.conv.id}/stop`, { method: "POST" });
      } catch (err) {
        this.errors.replaceChildren(errorBox(err));
      }
    }
  }
}

function targetOf(s) {
  const q = quoteOf(s);
  return { document_id: s.document_id, chunk_id: s.chunk_id, start: q.start, end: q.end, page: s.page, filename: s.filename };
}

/** [start, end] of each sentence the server's attribution found no support for. */
function unsupportedSpans(m) {
  const att = m.metadata && m.metadata.attribution;
  if (!att || !Array.isArray(att.sentences) || !m.content) return [];
  return att.sentences
    .filter((s) => s.supported === false && Number.isInteger(s.start) && Number.isInteger(s.end) && s.end > s.start)
    .map((s) => [s.start, s.end]);
}
