// Markdown for model output, which is untrusted text: the renderer only ever creates elements and text
// nodes (never innerHTML), so "<script>" or "<img onerror=...>" in an answer shows up as those characters.
// Supported: paragraphs, line breaks, # headings, - / 1. lists, > quotes, ``` code blocks, `code`,
// **bold**, *italic*, [links](https://...) (http, https and mailto only).

const INLINE = /(`+)([\s\S]*?[^`])\1(?!`)|\*\*([^*\n]+)\*\*|__([^_\n]+)__|\*([^*\s][^*\n]*)\*|_([^_\s][^_\n]*)_|\[([^\]\n]+)\]\(([^)\s]+)\)/g;
const SAFE_LINK = /^(https?:\/\/|mailto:)/i;

function inline(parent, text) {
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) parent.append(document.createTextNode(text.slice(last, m.index)));
    if (m[1]) {
      const code = document.createElement("code");
      code.textContent = m[2];
      parent.append(code);
    } else if (m[3] || m[4]) {
      const strong = document.createElement("strong");
      inline(strong, m[3] || m[4]);
      parent.append(strong);
    } else if (m[5] || m[6]) {
      const em = document.createElement("em");
      inline(em, m[5] || m[6]);
      parent.append(em);
    } else if (SAFE_LINK.test(m[8])) {
      const a = document.createElement("a");
      a.href = m[8];
      a.rel = "noopener noreferrer nofollow";
      a.target = "_blank";
      a.textContent = m[7];
      parent.append(a);
    } else {
      parent.append(document.createTextNode(m[0])); // javascript: and friends stay plain text
    }
    last = m.index + m[0].length;
  }
  if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
}

function lines(parent, rows) {
  rows.forEach((row, i) => {
    if (i) parent.append(document.createElement("br"));
    inline(parent, row);
  });
}

// Render `text` into a DocumentFragment.
export function renderMarkdown(text) {
  const out = document.createDocumentFragment();
  const rows = String(text).replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < rows.length) {
    const row = rows[i];
    const fence = row.match(/^\s*(```|~~~)\s*([\w+-]*)\s*$/);
    if (fence) {
      const body = [];
      i++;
      while (i < rows.length && !rows[i].trim().startsWith(fence[1])) body.push(rows[i++]);
      i++; // the closing fence (or the end of a still-streaming answer)
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      if (fence[2]) code.dataset.lang = fence[2];
      code.textContent = body.join("\n");
      pre.append(code);
      out.append(pre);
      continue;
    }
    const heading = row.match(/^(#{1,6})\s+(.*)$/);
    if (heading) {
      const h = document.createElement(`h${Math.min(6, heading[1].length + 2)}`);
      inline(h, heading[2]);
      out.append(h);
      i++;
      continue;
    }
    const item = /^\s*([-*+]|\d+[.)])\s+/;
    if (item.test(row)) {
      const ordered = /^\s*\d/.test(row);
      const list = document.createElement(ordered ? "ol" : "ul");
      while (i < rows.length && item.test(rows[i]) && /^\s*\d/.test(rows[i]) === ordered) {
        const li = document.createElement("li");
        inline(li, rows[i].replace(item, ""));
        list.append(li);
        i++;
      }
      out.append(list);
      continue;
    }
    if (/^\s*>/.test(row)) {
      const quote = document.createElement("blockquote");
      const body = [];
      while (i < rows.length && /^\s*>/.test(rows[i])) body.push(rows[i++].replace(/^\s*>\s?/, ""));
      lines(quote, body);
      out.append(quote);
      continue;
    }
    if (!row.trim()) {
      i++;
      continue;
    }
    const body = [];
    while (i < rows.length && rows[i].trim() && !/^(\s*(```|~~~)|#{1,6}\s|\s*([-*+]|\d+[.)])\s|\s*>)/.test(rows[i])) {
      body.push(rows[i++]);
    }
    if (!body.length) body.push(rows[i++]); // a line the block rules above did not take after all
    const p = document.createElement("p");
    lines(p, body);
    out.append(p);
  }
  return out;
}
