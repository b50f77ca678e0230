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

// Sentence bounds put into the Markdown before it is parsed, so an unverified sentence is
// found again in the rendered DOM whatever formatting it holds. Both are Unicode symbols
// (\p{S}): to marked's emphasis rules they are punctuation, which leaves **, _ and list,
// heading, quote and table syntax as they were. The same characters in the text itself
// are replaced first, so they cannot be mistaken for bounds.
const OPEN = "\u2402";
const CLOSE = "\u2403";
const BOUNDS = /[\u2402\u2403]/g;
const HAS_BOUND = /[\u2402\u2403]/;
const BLOCK_LEADER = /^(?:[ \t]+|[-*+\u2022](?=[ \t])|#{1,6}(?=[ \t])|>|\||\d{1,3}[.)](?=[ \t]))*/;

/**
 * `text` with OPEN/CLOSE around each span. Spans are [start, end] in code points (the
 * server's offsets are Python string indexes), so an emoji before them shifts nothing.
 */
function withBounds(text, spans) {
  const cps = Array.from(String(text || "").replace(BOUNDS, "\uFFFD"));
  const marks = [];
  for (const [s, e] of spans) {
    let a = Math.max(0, Math.min(s, cps.length));
    let b = Math.max(a, Math.min(e, cps.length));
    // A sentence that starts a line starts after its block syntax ("- ", "# ", "> ", "| ").
    let lineStart = a;
    while (lineStart > 0 && cps[lineStart - 1] !== "\n") lineStart -= 1;
    if (!cps.slice(lineStart, a).join("").trim()) a += Array.from(cps.slice(a, b).join("").match(BLOCK_LEADER)[0]).length;
    while (b > a && /[\s|]/.test(cps[b - 1])) b -= 1;
    if (b > a) marks.push([a, OPEN], [b, CLOSE]);
  }
  // From the end, so earlier positions stay valid; at one position a CLOSE goes first.
  marks.sort((x, y) => y[0] - x[0] || (x[1] === OPEN ? -1 : 1));
  for (const [pos, ch] of marks) cps.splice(pos, 0, ch);
  return cps.join("");
}

/** Wrap the text between the bounds in marks saying the sources do not support it. */
function markUnverified(frag) {
  const walker = document.createTreeWalker(frag, NodeFilter.SHOW_TEXT);
  const nodes = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) nodes.push(n);
  let inside = false;
  for (const node of nodes) {
    const text = node.nodeValue;
    if (!inside && !HAS_BOUND.test(text)) continue;
    const out = document.createDocumentFragment();
    for (const part of text.split(/([\u2402\u2403])/)) {
      if (part === OPEN) inside = true;
      else if (part === CLOSE) inside = false;
      else if (inside && part.trim()) out.append(h("span", { class: "unverified", testid: "unverified", title: "not found in the sources" }, part));
      else if (part) out.append(part);
    }
    node.replaceWith(out);
  }
}

/**
 * The answer's DOM: Markdown, with each [n] that names a source turned into a chip.
 * onCite(source, chip) is called on click; hover and focus show the quoted passage.
 * unverified: [start, end] spans of the content (code points) to mark as not supported.
 */
export function renderAnswer(text, sources, { onCite, onHover, unverified } = {}) {
  const spans = unverified || [];
  const frag = markdownFragment(spans.length ? withBounds(text, spans) : text);
  if (spans.length) markUnverified(frag);
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
