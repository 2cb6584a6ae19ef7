// Usage receipts (spec §8, swarmnode/trust/receipts.py): the browser node countersigns what it served, like a Python node.
import { decode as msgpackDecode, encode as msgpackEncode } from "../msgpack/index.mjs";

const CLIENT_TAG = new TextEncoder().encode("layerswarm/receipt/v1/client\0");
const NODE_TAG = new TextEncoder().encode("layerswarm/receipt/v1/node\0");
const FIELDS = ["client_key", "end_block", "issued_at", "model", "node_key", "receipt_id", "session_id", "start_block", "tokens", "v"];
const INT_FIELDS = new Set(["end_block", "issued_at", "start_block", "tokens", "v"]);
const KEY = /^ed25519:[A-Za-z0-9_-]{43}$/;

export class ReceiptError extends Error {}

export function b64url(bytes) {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

export function unb64url(text, what) {
  if (typeof text !== "string" || !/^[A-Za-z0-9_-]*$/.test(text) || text.length > 4096) throw new ReceiptError(`${what} is not base64url`);
  const padded = text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4);
  try {
    return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
  } catch {
    throw new ReceiptError(`${what} is not base64url`);
  }
}

function concat(a, b) {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/** Parse canonical receipt bytes (§8.1): exactly the fields, sorted, ints and strings, one encoding. */
export function decodeReceipt(bytes) {
  if (bytes.length > 2048) throw new ReceiptError("a receipt is at most 2048 bytes of msgpack");
  let body;
  try {
    body = msgpackDecode(bytes, { useBigInt64: true, extensionCodec: { decode: () => { throw new ReceiptError("no ext types"); }, tryToEncode: () => null } });
  } catch (exc) {
    throw exc instanceof ReceiptError ? exc : new ReceiptError(`not msgpack (${exc.name})`);
  }
  if (body === null || typeof body !== "object" || Array.isArray(body) || body instanceof Uint8Array) throw new ReceiptError("a receipt is a map");
  const keys = Object.keys(body).sort();
  if (keys.join() !== FIELDS.join()) throw new ReceiptError(`a receipt is a map with exactly the keys ${FIELDS.join(", ")}`);
  for (const name of FIELDS) {
    const value = body[name];
    if (INT_FIELDS.has(name)) {
      if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) throw new ReceiptError(`${name} must be a non-negative integer`);
    } else if (typeof value !== "string" || value.length < 1 || value.length > 128) {
      throw new ReceiptError(`${name} must be a string of 1 to 128 characters`);
    }
  }
  if (body.v !== 1) throw new ReceiptError(`receipt version ${body.v} not supported`);
  if (!/^[0-9a-f]{32}$/.test(body.receipt_id)) throw new ReceiptError("receipt_id must be 32 lowercase hex characters");
  if (!(body.start_block < body.end_block)) throw new ReceiptError("start_block must be below end_block");
  if (body.tokens <= 0) throw new ReceiptError("a receipt is for at least one token");
  if (!KEY.test(body.client_key) || !KEY.test(body.node_key)) throw new ReceiptError("keys must be ed25519:<base64url>");
  if (body.client_key === body.node_key) throw new ReceiptError("a node cannot be its own client");
  const sorted = {};
  for (const name of FIELDS) sorted[name] = body[name];
  const again = msgpackEncode(sorted);
  if (again.length !== bytes.length || again.some((b, i) => b !== bytes[i])) throw new ReceiptError("receipt bytes are not in canonical form");
  return body;
}

/**
 * The node's side of §8.3: check the client's receipt against what this node served, then countersign.
 * @returns {Promise<object>} ``{receipt, client_signature, node_signature, block_tokens}`` (base64url strings)
 * @throws {ReceiptError} with the reason to put in ``receipt_error``
 */
export async function countersign(signingKey, nodeKey, receiptText, clientSignature, { sessionId, model, startBlock, endBlock, served }) {
  const bytes = unb64url(receiptText, "receipt");
  const receipt = decodeReceipt(bytes);
  let clientKey;
  try {
    clientKey = await crypto.subtle.importKey("raw", unb64url(receipt.client_key.split(":")[1], "key"), { name: "Ed25519" }, false, ["verify"]);
  } catch (exc) {
    throw exc instanceof ReceiptError ? exc : new ReceiptError("the client key is not an Ed25519 key");
  }
  const signature = unb64url(clientSignature, "client_signature");
  if (!(await crypto.subtle.verify({ name: "Ed25519" }, clientKey, signature, concat(CLIENT_TAG, bytes)))) {
    throw new ReceiptError("the client's signature does not verify");
  }
  if (receipt.node_key !== nodeKey) throw new ReceiptError("the receipt names another node");
  if (receipt.session_id !== sessionId) throw new ReceiptError("the receipt is for another session");
  if (receipt.model !== model || receipt.start_block !== startBlock || receipt.end_block !== endBlock) {
    throw new ReceiptError(`the receipt is for ${receipt.model} [${receipt.start_block}:${receipt.end_block})`);
  }
  if (receipt.tokens > served) throw new ReceiptError(`the receipt claims ${receipt.tokens} tokens; this node served ${served}`);
  const nodeSignature = new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, signingKey, concat(NODE_TAG, bytes)));
  return {
    receipt: receiptText,
    client_signature: clientSignature,
    node_signature: b64url(nodeSignature),
    block_tokens: receipt.tokens * (receipt.end_block - receipt.start_block),
  };
}
