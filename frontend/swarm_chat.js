// SwarmChat: a small client for the portal's chat websocket (/ws/chat/). The chat page uses it; so can
// any page of the same origin (the socket authenticates with the session cookie).
//
//   import { SwarmChat } from "/static/swarm_chat.js";
//   const chat = new SwarmChat();            // connects, and reconnects when the socket drops
//   chat.addEventListener("token", (e) => out.append(e.detail.text));
//   const done = await chat.send("What is the capital of France?", { settings: { temperature: 0 } });
//   console.log(done.message.content, done.conversation);   // the stored answer and its conversation
//   chat.stop();                             // ends the current answer at once (the swarm sessions close)
//
// Events (CustomEvent, `detail` = the server's message): open, close ({ reconnectIn }), accepted,
// started, token, done, error. `send` and `regenerate` resolve with the `done` message and reject with an
// Error whose `code` is the server's (invalid_value, insufficient_credits, busy, disconnected, ...).

export class SwarmChat extends EventTarget {
  constructor({ url = defaultUrl(), reconnect = true, minDelayMs = 500, maxDelayMs = 8000 } = {}) {
    super();
    Object.assign(this, { url, reconnect, minDelayMs, maxDelayMs });
    this.delay = minDelayMs;
    this.pending = null; // { resolve, reject } of the answer in progress
    this.closed = false;
    this.connect();
  }

  get connected() {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  connect() {
    this.closed = false;
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => {
      this.delay = this.minDelayMs;
      this.emit("open", {});
    };
    ws.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      this.emit(message.type, message);
      if (message.type === "done") this.settle((p) => p.resolve(message));
      if (message.type === "error" && message.code !== "busy") {
        this.settle((p) => p.reject(Object.assign(new Error(message.message), { code: message.code })));
      }
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      // The server cancels an answer whose socket dropped, so a pending answer ends here.
      this.settle((p) => p.reject(Object.assign(new Error("the connection dropped"), { code: "disconnected" })));
      const reconnectIn = this.reconnect && !this.closed ? this.delay : null;
      this.emit("close", { reconnectIn });
      if (reconnectIn !== null) {
        this.timer = setTimeout(() => this.connect(), reconnectIn);
        this.delay = Math.min(this.maxDelayMs, this.delay * 2);
      }
    };
  }

  // Ask a question; `conversation` null starts a new one. Resolves with the `done` message.
  // `systemPrompt` (optional) replaces the conversation's system prompt ("" clears it).
  send(content, { conversation = null, model, settings, systemPrompt } = {}) {
    return this.request({ type: "send", conversation, content, model, settings, system_prompt: systemPrompt });
  }

  // Answer the last question of `conversation` again (its last answer is replaced).
  regenerate(conversation, { model, settings, systemPrompt } = {}) {
    return this.request({ type: "regenerate", conversation, model, settings, system_prompt: systemPrompt });
  }

  // Stop the answer in progress; the part already received is kept (finish_reason "cancelled").
  stop() {
    if (this.connected) this.ws.send(JSON.stringify({ type: "stop" }));
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.ws?.close();
  }

  request(message) {
    if (!this.connected) {
      return Promise.reject(Object.assign(new Error("not connected yet"), { code: "disconnected" }));
    }
    if (this.pending) return Promise.reject(Object.assign(new Error("an answer is in progress"), { code: "busy" }));
    return new Promise((resolve, reject) => {
      this.pending = { resolve, reject };
      this.ws.send(JSON.stringify(message));
    });
  }

  settle(fn) {
    const pending = this.pending;
    this.pending = null;
    if (pending) fn(pending);
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

export function defaultUrl(path = "/ws/chat/") {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
}
