// Markdown for model output, which is untrusted text. Maintained libraries do the work, served by the
// portal from npm (see portal/chat/libraries.py; no CDN): marked (CommonMark + GitHub tables), highlight.js
// (code), DOMPurify (the last word on what reaches the page).
// Model output never executes: raw HTML in an answer is shown as the characters it is made of, links work
// only for http(s) and mailto, images are shown as their Markdown text, and DOMPurify sanitizes the result.
import { Marked } from "/chat/lib/marked.js";
import DOMPurify from "/chat/lib/purify.js";
import hljs from "/chat/lib/highlight.js";

const SAFE_LINK = /^(https?:\/\/|mailto:)/i;
const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escape = (text) => String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);

function highlighted(text, lang) {
  const language = lang && hljs.getLanguage(lang) ? lang : null;
  try {
    return language ? hljs.highlight(text, { language, ignoreIllegals: true }) : hljs.highlightAuto(text);
  } catch {
    return { value: escape(text), language: null };
  }
}

const marked = new Marked({
  gfm: true,
  async: false,
  renderer: {
    html({ text }) {
      return escape(text); // raw HTML from the model is text, never markup
    },
    link({ href, tokens, raw }) {
      if (!SAFE_LINK.test(href || "")) return escape(raw); // javascript:, data: and friends stay text
      return `<a href="${escape(href)}">${this.parser.parseInline(tokens)}</a>`;
    },
    image({ raw }) {
      return escape(raw); // no tracking pixels, no surprises: an image stays its Markdown text
    },
    heading({ tokens, depth }) {
      const level = Math.min(6, depth + 1); // the page owns h1; an answer's headings sit below it
      return `<h${level}>${this.parser.parseInline(tokens)}</h${level}>\n`;
    },
    code({ text, lang }) {
      const wanted = (lang || "").match(/^[\w+#.-]*/)[0];
      const result = highlighted(text, wanted);
      const name = result.language || wanted;
      const cls = `hljs${name ? ` language-${escape(name)}` : ""}`;
      return `<pre><code class="${cls}" data-lang="${escape(name || "")}">${result.value}</code></pre>\n`;
    },
  },
});

const PURIFY = {
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:)/i,
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "img", "svg", "math", "iframe"],
  FORBID_ATTR: ["style", "id", "name"],
  RETURN_DOM_FRAGMENT: true,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("rel", "noopener noreferrer nofollow");
    node.setAttribute("target", "_blank");
  }
});

// Render `text` into a DocumentFragment (code blocks highlighted, each with a copy button when `copy` is given:
// copy(text, button) is called on click).
export function renderMarkdown(text, { copy = null } = {}) {
  const fragment = DOMPurify.sanitize(marked.parse(String(text)), PURIFY);
  for (const pre of fragment.querySelectorAll("pre")) {
    const code = pre.querySelector("code");
    const box = document.createElement("div");
    box.className = "code-block";
    pre.replaceWith(box);
    box.append(pre);
    if (copy && code) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "copy copy-code";
      const lang = code.dataset.lang;
      button.textContent = "Copy code";
      if (lang) button.setAttribute("aria-label", `Copy code (${lang})`);
      button.addEventListener("click", () => copy(code.textContent, button));
      box.prepend(button);
    }
  }
  for (const table of fragment.querySelectorAll("table")) {
    const wrap = document.createElement("div");
    wrap.className = "table-wrap";
    table.replaceWith(wrap);
    wrap.append(table);
  }
  return fragment;
}
