// Answers as safe Markdown: raw HTML is shown as text, links and images become plain text,
// DOMPurify keeps only formatting tags, and every [n] becomes a citation chip.
import { Marked } from "../vendor/marked/marked.esm.js";
import DOMPurify from "../vendor/dompurify/purify.es.mjs";
import { h } from "./api.js";

const escapeHtml = (s) =>
  String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

const md = new Marked({ gfm: true, breaks: true, async: false });
md.use({
  renderer: {
    html(token) {
      return escapeHtml(token.raw ?? token.text ?? "");
    },
    // No request may leave the page: an image is its alt text, a link its text.
    image(token) {
      return escapeHtml(token.text || "");
    },
    link(token) {
      return this.parser.parseInline(token.tokens || []);
    },
  },
});

const ALLOWED_TAGS = [
  "p", "br", "strong", "em", "b", "i", "code", "pre", "ul", "ol", "li", "blockquote",
  "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td", "hr", "del",
];

/** Sanitized HTML fragment of a Markdown text (no attributes survive, no URL, no script). */
export function markdownFragment(text) {
  const html = md.parse(String(text || ""));
  return DOMPurify.sanitize(html, { ALLOWED_TAGS, ALLOWED_ATTR: [], RETURN_DOM_FRAGMENT: true });
}

/**
 * A search snippet: the server sends the passage's raw text with the matched terms wrapped
 * in <mark>...</mark>. Everything else is text (a document's own "<script>" stays text), so
 * the snippet is split on the markers, never parsed as HTML.
 */
export function snippetFragment(snippet) {
  const frag = document.createDocumentFragment();
  String(snippet || "").split(/(<mark>[\s\S]*?<\/mark>)/).forEach((part) => {
    if (part.startsWith("<mark>") && part.endsWith("</mark>")) frag.append(h("mark", {}, part.slice(6, -7)));
    else if (part) frag.append(part);
  });
  return frag;
}

const MARKER = /\[(\d+(?:\s*,\s*\d+)*)\]/g;

/**
 * The answer's DOM: Markdown, with each [n] that names a source turned into a chip.
 * onCite(source, chip) is called on click; hover and focus show the quoted passage.
 */
export function renderAnswer(text, sources, { onCite, onHover } = {}) {
  const frag = markdownFragment(text);
  const byIndex = new Map((sources || []).map((s) => [Number(s.index), s]));
  const walker = document.createTreeWalker(frag, NodeFilter.SHOW_TEXT);
  const nodes = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (n.parentElement && n.parentElement.closest("code, pre")) continue;
    MARKER.lastIndex = 0;
    if (MARKER.test(n.nodeValue)) nodes.push(n);
  }
  for (const node of nodes) {
    const text = node.nodeValue;
    const out = document.createDocumentFragment();
    let last = 0;
    MARKER.lastIndex = 0;
    for (let m = MARKER.exec(text); m; m = MARKER.exec(text)) {
      out.append(text.slice(last, m.index));
      const nums = m[1].split(",").map((x) => Number(x.trim()));
      if (nums.every((k) => byIndex.has(k))) {
        nums.forEach((k) => out.append(citationChip(byIndex.get(k), { onCite, onHover })));
      } else {
        out.append(m[0]);
      }
      last = m.index + m[0].length;
    }
    out.append(text.slice(last));
    node.replaceWith(out);
  }
  return frag;
}

export function citationChip(source, { onCite, onHover } = {}) {
  const where = [source.filename, source.page ? `page ${source.page}` : null].filter(Boolean).join(", ");
  const chip = h(
    "button",
    {
      type: "button",
      class: "citation" + (source.support != null && source.support < 0.5 ? " weak" : ""),
      testid: "citation",
      dataset: { index: String(source.index) },
      "aria-label": `Source ${source.index}: ${where}`,
      onclick: (e) => {
        e.preventDefault();
        onCite && onCite(source, chip);
      },
    },
    String(source.index),
  );
  if (onHover) {
    const show = () => onHover(source, chip, true);
    const hide = () => onHover(source, chip, false);
    chip.addEventListener("mouseenter", show);
    chip.addEventListener("focus", show);
    chip.addEventListener("mouseleave", hide);
    chip.addEventListener("blur", hide);
  }
  return chip;
}

/** The passage a source stands for: its verified quote when the server gave one. */
export function quoteOf(source) {
  if (source.quote && source.quote.text) return source.quote;
  return { start: source.start, end: source.end, text: source.excerpt || "" };
}
