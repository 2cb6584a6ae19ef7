// The Layerswarm wire protocol, version 1, for a node running in a browser.
// Mirrors swarmnode/protocol (spec: swarmnode/protocol/README.md); section numbers below refer to it.
// Pure functions over bytes: works in a page and in a Web Worker.
import { decode as msgpackDecode, encode as msgpackEncode } from "../msgpack/index.mjs";

export const PROTOCOL_VERSION = 1;

export const DEFAULT_LIMITS = Object.freeze({
  maxFrameBytes: 64 * 1024 * 1024, // §6
  maxTokensPerStep: 4096,
  maxBatch: 64,
  maxSessionIdLen: 128,
  maxSessionLength: 8192,
});

const DTYPE_SIZES = { float32: 4, float16: 2, bfloat16: 2 }; // §3.1

export class ProtocolError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error("this browser is big-endian; the wire format is little-endian (§3.2)");
}

// §2.1: msgpack extension types are refused (the decoder calls this for every ext value).
const REFUSE_EXT = {
  tryToEncode: () => null,
  decode: () => {
    throw new ProtocolError("bad_frame", "msgpack extension types are not allowed");
  },
};

// Field types of each message (§4): "int", "str", "float", "bool", "strs", "tensor".
export const MESSAGE_FIELDS = {
  info: {},
  info_reply: {
    model: "str", start_block: "int", end_block: "int", num_blocks: "int", hidden_size: "int", dtype: "str",
    backend: "str", device: "str", version: "str", cache_tokens_left: "int", max_session_length: "int",
    open_sessions: "int", throughput: "float", prefill_throughput: "float", state: "str", public_key: "str",
  },
  open_session: { session_id: "str", max_length: "int", dtype: "str", push_key: "str", prefix_salt: "str" },
  session_opened: { session_id: "str", cache_tokens_left: "int" },
  step: { session_id: "str", position: "int", hidden: "tensor", push_key: "str", route: "strs", skip_signature: "bool" },
  step_result: { session_id: "str", position: "int", hidden: "tensor", compute_us: "int", signature: "str", cached_tokens: "int" },
  forward: { hidden: "tensor" },
  forward_result: { hidden: "tensor", compute_us: "int", signature: "str" },
  close_session: { session_id: "str", receipt: "str", client_signature: "str" },
  session_closed: { session_id: "str", tokens: "int", node_signature: "str", receipt_error: "str" },
  error: { code: "str", message: "str", session_id: "str" },
};

const DEFAULTS = { int: 0, str: "", float: 0, bool: false, strs: [], tensor: null };
const INT_LIMIT = 2 ** 62;

/** A tensor as it travels (§3): dtype, shape and little-endian bytes (a Uint8Array of its own). */
export class WireTensor {
  constructor(dtype, shape, data) {
    this.dtype = dtype;
    this.shape = shape;
    this.data = data;
  }

  get numel() {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  /** The values as a Float32Array (float16 and bfloat16 widened). */
  toFloat32() {
    const buf = this.data.buffer.slice(this.data.byteOffset, this.data.byteOffset + this.data.byteLength);
    if (this.dtype === "float32") return new Float32Array(buf);
    const words = new Uint16Array(buf);
    const out = new Float32Array(words.length);
    if (this.dtype === "bfloat16") {
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < words.length; i++) bits[i] = words[i] << 16;
    } else {
      for (let i = 0; i < words.length; i++) out[i] = halfToFloat(words[i]);
    }
    return out;
  }

  /** Encode float32 values in ``dtype`` (round to nearest even, as torch does). */
  static fromFloat32(values, shape, dtype = "float32") {
    if (dtype === "float32") return new WireTensor(dtype, shape, new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
    const words = new Uint16Array(values.length);
    if (dtype === "bfloat16") {
      const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
      for (let i = 0; i < values.length; i++) {
        const b = bits[i];
        words[i] = (b & 0x7fffffff) > 0x7f800000 ? (b >>> 16) | 0x40 : (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
      }
    } else {
      for (let i = 0; i < values.length; i++) words[i] = floatToHalf(values[i]);
    }
    return new WireTensor(dtype, shape, new Uint8Array(words.buffer));
  }

  toWire() {
    return { dtype: this.dtype, shape: this.shape, data: this.data };
  }
}

function halfToFloat(h) {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}

const F32 = new Float32Array(1);
const U32 = new Uint32Array(F32.buffer);
function floatToHalf(value) {
  F32[0] = value;
  const x = U32[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = sign | (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  return half;
}

/** Parse and check a tensor map (§3.1, §3.2). */
export function tensorFromWire(obj) {
  if (obj === null || typeof obj !== "object" || Array.isArray(obj) || obj instanceof Uint8Array) {
    throw new ProtocolError("bad_tensor", "tensor must be a map with dtype, shape and data");
  }
  const { dtype, shape, data } = obj;
  if (!Object.hasOwn(DTYPE_SIZES, dtype)) {
    throw new ProtocolError("bad_dtype", `dtype ${JSON.stringify(dtype)} not allowed; use one of bfloat16, float16, float32`);
  }
  if (!Array.isArray(shape) || shape.length < 1 || shape.length > 4 || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new ProtocolError("bad_shape", `shape must be 1..4 non-negative integers, got ${JSON.stringify(shape)}`);
  }
  if (!(data instanceof Uint8Array)) throw new ProtocolError("bad_tensor", "tensor data must be raw bytes");
  const t = new WireTensor(dtype, shape.slice(), data);
  if (t.numel * DTYPE_SIZES[dtype] !== data.byteLength) {
    throw new ProtocolError("bad_tensor", `${data.byteLength} data bytes do not match shape [${shape}] of ${dtype}`);
  }
  return t;
}

function checkField(name, kind, value) {
  switch (kind) {
    case "int":
      if (typeof value === "bigint") {
        // 64-bit msgpack integers: allowed within ±2^62 (§2.4); kept exact (an id is echoed back as sent).
        if (value <= -(2n ** 62n) || value >= 2n ** 62n) throw new ProtocolError("bad_field", `${name} must be an integer`);
        return Number.isSafeInteger(Number(value)) ? Number(value) : value;
      }
      if (!Number.isInteger(value) || Math.abs(value) >= INT_LIMIT) throw new ProtocolError("bad_field", `${name} must be an integer`);
      return value;
    case "str":
      if (typeof value !== "string" || value.length > 4096) throw new ProtocolError("bad_field", `${name} must be a short string`);
      return value;
    case "float":
      if (typeof value !== "number" || !Number.isFinite(value)) throw new ProtocolError("bad_field", `${name} must be a finite number`);
      return value;
    case "bool":
      if (typeof value !== "boolean") throw new ProtocolError("bad_field", `${name} must be true or false`);
      return value;
    case "strs":
      if (!Array.isArray(value) || value.length > 64 || !value.every((v) => typeof v === "string" && v.length <= 4096)) {
        throw new ProtocolError("bad_field", `${name} must be a list of at most 64 short strings`);
      }
      return value;
    case "tensor":
      return value === null ? null : tensorFromWire(value);
    default:
      throw new Error(`unknown field kind ${kind}`);
  }
}

/** Parse and type-check one frame (§2). Returns ``{type, id, ...fields}``; throws ProtocolError. */
export function decodeFrame(frame, limits = DEFAULT_LIMITS) {
  if (typeof frame === "string") throw new ProtocolError("bad_frame", "frames must be binary msgpack, not text");
  const bytes = frame instanceof Uint8Array ? frame : new Uint8Array(frame);
  if (bytes.byteLength > limits.maxFrameBytes) {
    throw new ProtocolError("frame_too_large", `frame of ${bytes.byteLength} bytes exceeds the limit of ${limits.maxFrameBytes}`);
  }
  let body;
  try {
    body = msgpackDecode(bytes, {
      extensionCodec: REFUSE_EXT,
      useBigInt64: true, // 64-bit integers arrive as BigInt, so none loses precision
      maxStrLength: 1 << 20,
      maxBinLength: limits.maxFrameBytes,
      maxArrayLength: 1 << 16,
      maxMapLength: 1 << 10,
      maxExtLength: 0,
    });
  } catch (exc) {
    if (exc instanceof ProtocolError) throw exc;
    throw new ProtocolError("bad_frame", `not a msgpack frame (${exc.name})`);
  }
  if (body === null || typeof body !== "object" || Array.isArray(body) || body instanceof Uint8Array) {
    throw new ProtocolError("bad_frame", "a frame must be a msgpack map");
  }
  if (body.v !== PROTOCOL_VERSION) {
    throw new ProtocolError("bad_version", `protocol version ${JSON.stringify(String(body.v))} not supported; use 1`);
  }
  const type = body.type;
  if (typeof type !== "string" || !Object.hasOwn(MESSAGE_FIELDS, type)) {
    throw new ProtocolError("unknown_type", `unknown message type ${JSON.stringify(String(type))}`);
  }
  const msg = { type, id: 0 };
  if (Object.hasOwn(body, "id")) msg.id = checkField("id", "int", body.id);
  for (const [name, kind] of Object.entries(MESSAGE_FIELDS[type])) {
    msg[name] = Object.hasOwn(body, name) ? checkField(name, kind, body[name]) : DEFAULTS[kind];
  }
  return msg;
}

/** Serialize a message ``{type, id, ...fields}`` to one binary frame. */
export function encodeFrame(msg) {
  const fields = MESSAGE_FIELDS[msg.type];
  if (!fields) throw new Error(`unknown message type ${msg.type}`);
  const body = { v: PROTOCOL_VERSION, type: msg.type, id: msg.id || 0 };
  for (const [name, kind] of Object.entries(fields)) {
    let value = Object.hasOwn(msg, name) ? msg[name] : DEFAULTS[kind];
    if (kind === "tensor" && value) value = value.toWire();
    body[name] = value;
  }
  return msgpackEncode(body, { extensionCodec: REFUSE_EXT, useBigInt64: true });
}

/** Check hidden states sent to a span (§3.3, §6): shape (B, T, H), limits, finite values. Returns Float32Array. */
export function checkHidden(tensor, hiddenSize, limits = DEFAULT_LIMITS) {
  if (!tensor) throw new ProtocolError("missing_tensor", "this message needs a 'hidden' tensor");
  if (tensor.shape.length !== 3) {
    throw new ProtocolError("bad_shape", `hidden states must be (batch, tokens, hidden), got [${tensor.shape}]`);
  }
  const [batch, tokens, hidden] = tensor.shape;
  if (hidden !== hiddenSize) throw new ProtocolError("wrong_hidden_size", `hidden size ${hidden} does not match the model's ${hiddenSize}`);
  if (batch < 1 || tokens < 1) throw new ProtocolError("bad_shape", "batch and token dimensions must be at least 1");
  if (tokens > limits.maxTokensPerStep) {
    throw new ProtocolError("too_many_tokens", `${tokens} tokens in one step exceed the limit of ${limits.maxTokensPerStep}`);
  }
  if (batch > limits.maxBatch) throw new ProtocolError("batch_too_large", `batch of ${batch} exceeds the limit of ${limits.maxBatch}`);
  const values = tensor.toFloat32();
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i])) throw new ProtocolError("not_finite", "hidden states contain NaN or infinite values");
  }
  return values;
}

const RESULT_DOMAIN = "layerswarm/result/v1"; // §11.1

async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The last position of a (B, T, H) tensor's bytes, as (B, 1, H) (§11.1). */
export function tailBytes(tensor) {
  const [b, t, h] = tensor.shape;
  const item = tensor.data.byteLength / Math.max(1, b * t * h);
  const row = h * item;
  const out = new Uint8Array(b * row);
  for (let i = 0; i < b; i++) out.set(tensor.data.subarray((i * t + t - 1) * row, (i * t + t) * row), i * row);
  return out;
}

/** The bytes a node signs for a result (§11.1, swarmnode/protocol/signing.py ``ResultDigest.to_bytes``). */
export async function resultDigest(kind, sessionId, position, startBlock, endBlock, input, output) {
  return msgpackEncode([
    RESULT_DOMAIN, kind, sessionId, position, input.shape[1], startBlock, endBlock, output.dtype,
    await sha256Hex(input.data), await sha256Hex(output.data), await sha256Hex(tailBytes(output)),
  ]);
}
