// The chat page: conversation list, streamed answers rendered as Markdown (safely: see markdown.js),
// Stop / Regenerate / New conversation, a system prompt and generation settings, copy buttons on answers and
// code blocks, rename / delete / export of the conversation, and the live decoding speed. Screen readers hear
// each finished answer once (the #announcer live region), not every token.
import { el } from "./dom.js";
import { renderMarkdown } from "./markdown.js";
import { SwarmChat } from "./swarm_chat.js";

const state = JSON.parse(document.getElementById("chat-state").textContent);
const $ = (id) => document.getElementById(id);
const messages = $("messages");
const input = $("chat-input");
const status = $("chat-status");
const speed = $("speed");
let conversation = state.conversation;
const announcer = $("announcer");
let current = null; // the answer being streamed: { node, text, pieces, firstAt, frame }

function announce(text) {
  announcer.textContent = "";
  requestAnimationFrame(() => (announcer.textContent = text)); // a change, even when the text repeats
}

async function copy(text, button) {
  let ok = true;
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    ok = false;
  }
  const label = button.textContent;
  button.textContent = ok ? "Copied" : "Copy failed";
  announce(ok ? "Copied to the clipboard" : "Copying failed: select the text and copy it");
  setTimeout(() => (button.textContent = label), 1500);
}

const NOTES = {
  cancelled: "stopped",
  length: "reached the max new tokens",
  error: "cut short: the swarm or its gateway failed",
};

function turn(role, text, meta = {}) {
  const body = el("div", { class: "body" });
  const node = el("article", { class: `turn ${role}`, "data-role": role }, el("div", { class: "who" }, role), body);
  if (meta.id) node.dataset.message = meta.id;
  setText(node, role, text);
  messages.append(node);
  node.scrollIntoView({ block: "end" });
  return node;
}

function setText(node, role, text) {
  const body = node.querySelector(".body");
  if (role === "assistant") body.replaceChildren(renderMarkdown(text, { copy }));
  else body.replaceChildren(el("p", { class: "plain" }, text));
}

function finish(node, message, { live = false } = {}) {
  node.classList.remove("streaming");
  node.removeAttribute("aria-busy");
  node.dataset.message = message.id;
  node.dataset.finish = message.finish_reason;
  setText(node, "assistant", message.content);
  const bits = [];
  if (NOTES[message.finish_reason]) bits.push(NOTES[message.finish_reason]);
  if (message.completion_tokens) bits.push(`${message.completion_tokens} tokens`);
  if (message.tokens_per_s) bits.push(`${message.tokens_per_s.toFixed(1)} tok/s`);
  const tools = el("div", { class: "answer-tools" });
  if (message.content) {
    const button = el("button", { type: "button", class: "copy copy-answer" }, "Copy answer");
    button.addEventListener("click", () => copy(message.content, button));
    tools.append(button);
  }
  if (bits.length) tools.append(el("span", { class: "meta" }, bits.join(" · ")));
  node.append(tools);
  if (live) announce(`Answer${NOTES[message.finish_reason] ? ` (${NOTES[message.finish_reason]})` : ""}: ${message.content}`);
}

function showConversationTools(c) {
  $("conversation-tools").hidden = false;
  $("rename-form").action = `/chat/${c.id}/rename/`;
  $("delete-form").action = `/chat/${c.id}/delete/`;
  $("export-md").href = `/chat/${c.id}/export.md`;
  $("export-json").href = `/chat/${c.id}/export.json`;
  $("rename-title").value = c.title;
}

function droppedNote(node, n) {
  if (n > 0) {
    const text = `${n} earlier message${n === 1 ? " was" : "s were"} left out: the conversation is longer than the model's context.`;
    node.before(el("div", { class: "context-note" }, text));
  }
}

function settings() {
  const out = {
    temperature: Number($("temperature").value),
    top_p: Number($("top-p").value),
    max_new_tokens: Math.round(Number($("max-new-tokens").value)),
  };
  localStorage.setItem("layerswarm-chat-settings", JSON.stringify(out));
  return out;
}

function busy(on) {
  $("send").disabled = on;
  $("stop").disabled = !on;
  $("regenerate").disabled = on || !conversation;
}

function showError(detail) {
  messages.append(el("div", { class: "turn error", "data-code": detail.code, role: "alert" }, detail.message));
}

function setup() {
  const saved = JSON.parse(localStorage.getItem("layerswarm-chat-settings") || "null") || {};
  const d = { ...state.defaults, ...saved };
  $("temperature").value = d.temperature;
  $("top-p").value = d.top_p;
  $("max-new-tokens").value = d.max_new_tokens;
  $("max-new-tokens").max = state.defaults.max_new_tokens_limit;
  $("system-prompt").value = conversation?.system_prompt ?? "";
  for (const m of state.models) {
    const label = m.covered ? m.name : `${m.name} (${m.banner})`;
    const option = el("option", { value: m.name }, label);
    if (!m.covered) option.disabled = true;
    if (m.name === state.defaults.model) option.selected = true;
    $("model").append(option);
  }
  if (conversation) showConversationTools(conversation);
  for (const m of state.messages) {
    const node = turn(m.role, m.content, { id: m.id });
    if (m.role === "assistant") {
      droppedNote(node, m.dropped_messages);
      finish(node, m);
    }
  }
  if (state.anonymous && state.tokens_left <= 0) {
    showError({ code: "insufficient_credits", message: "The free quota for today is used up: log in to keep chatting." });
  }
}

setup();
const chat = new SwarmChat();

chat.addEventListener("open", () => {
  status.textContent = "connected";
  status.dataset.live = "true";
});
chat.addEventListener("close", (e) => {
  status.dataset.live = "false";
  status.textContent = e.detail.reconnectIn !== null ? "connection lost: reconnecting…" : "disconnected";
  if (current) {
    finish(current.node, { id: "", content: current.text, finish_reason: "cancelled" }, { live: true });
    current = null;
    busy(false);
  }
});
chat.addEventListener("accepted", (e) => {
  const c = e.detail.conversation;
  if (!conversation || conversation.id !== c.id) {
    conversation = c;
    history.replaceState(null, "", `/chat/${c.id}/`);
    document.title = `${c.title} · Chat · Layerswarm`;
    const list = $("conversation-list");
    list.querySelector(".empty")?.remove();
    list.querySelectorAll("li.current").forEach((li) => li.classList.remove("current"));
    list.querySelectorAll("[aria-current]").forEach((a) => a.removeAttribute("aria-current"));
    const link = el("a", { href: `/chat/${c.id}/`, "data-conversation": c.id, "aria-current": "page" }, c.title);
    list.prepend(el("li", { class: "current" }, link));
    showConversationTools(c);
  }
  if (e.detail.question) turn("user", e.detail.question.content, { id: e.detail.question.id });
  const node = turn("assistant", "");
  node.classList.add("streaming");
  node.setAttribute("aria-busy", "true");
  current = { node, text: "", pieces: 0, firstAt: 0, frame: 0 };
});
chat.addEventListener("started", (e) => {
  if (current) droppedNote(current.node, e.detail.dropped_messages);
});
chat.addEventListener("token", (e) => {
  if (!current) return;
  current.text += e.detail.text;
  current.pieces += 1;
  const now = performance.now();
  if (!current.firstAt) current.firstAt = now;
  else speed.textContent = `${((current.pieces - 1) / ((now - current.firstAt) / 1000)).toFixed(1)} tok/s`;
  if (current.frame) return; // one Markdown render per animation frame, however fast tokens come
  const shown = current;
  shown.frame = requestAnimationFrame(() => {
    shown.frame = 0;
    if (current !== shown) return;
    setText(shown.node, "assistant", shown.text);
    shown.node.scrollIntoView({ block: "end" });
  });
});

function settle() {
  if (current?.frame) cancelAnimationFrame(current.frame);
}

chat.addEventListener("done", (e) => {
  settle();
  if (current) finish(current.node, e.detail.message, { live: true });
  if (e.detail.message.tokens_per_s) speed.textContent = `${e.detail.message.tokens_per_s.toFixed(1)} tok/s`;
  current = null;
  busy(false);
});
chat.addEventListener("error", (e) => {
  if (current) {
    // The part of the answer that was streamed before the gateway or the swarm failed is stored (and charged): keep it.
    settle();
    if (e.detail.answer) finish(current.node, e.detail.answer);
    else current.node.remove();
    current = null;
  }
  showError(e.detail);
  busy(false);
});

async function ask(promise) {
  busy(true);
  speed.textContent = "";
  try {
    await promise;
  } catch (err) {
    if (err.code === "disconnected" || err.code === "busy") showError({ code: err.code, message: err.message });
  }
}

$("chat-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = input.value;
  if (!text.trim() || current) return;
  input.value = "";
  const options = { model: $("model").value, settings: settings(), systemPrompt: $("system-prompt").value };
  ask(chat.send(text, { conversation: conversation?.id ?? null, ...options }));
});
input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    $("chat-form").requestSubmit();
  }
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && current) {
    e.preventDefault();
    chat.stop();
  }
});
$("stop").addEventListener("click", () => chat.stop());
$("regenerate").addEventListener("click", () => {
  if (!conversation || current) return;
  const answers = messages.querySelectorAll(".turn.assistant");
  const last = messages.lastElementChild;
  if (last?.classList.contains("assistant")) last.remove();
  else if (answers.length && last?.classList.contains("error")) last.remove();
  const options = { model: $("model").value, settings: settings(), systemPrompt: $("system-prompt").value };
  ask(chat.regenerate(conversation.id, options));
});
