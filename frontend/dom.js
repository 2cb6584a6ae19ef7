// Tiny DOM helpers shared by the pages: build elements with text (never innerHTML with data).

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "style") Object.assign(node.style, value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Call `load` now and every `ms` milliseconds; errors keep the last good render on screen.
export function poll(load, ms) {
  const tick = async () => {
    try {
      await load();
    } catch (err) {
      console.warn("refresh failed", err);
    }
    setTimeout(tick, ms);
  };
  setTimeout(tick, ms);
}

export async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}
