// The browser node's connection to the portal's relay (/ws/relay/): see swarmnode/protocol/README.md.
export class RelayLink {
  constructor(node, url, token, keys) {
    this.node = node;
    this.url = url;
    this.token = token;
    this.keys = keys;
  }

  async connect() {
    throw new Error("this portal has no relay yet: a browser node cannot be reached");
  }

  close() {}
}
