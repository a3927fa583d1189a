// The Deno side of flux/runtime/deno.py: runs one function call at a time, each in a fresh node:vm context
// (fresh globals: nothing an earlier request left behind is visible). Messages are JSON lines:
//   in:  {type: "run", code?, sha, lang, request, now, seed}   {type: "reply", id, answer, now}
//   out: {type: "ready"}   {type: "call", id, op, args}   {type: "done", ok, value | error}
// Calls may overlap (Promise.all); the host answers them in the order they were sent.
// Time and randomness inside a call come from the host: Date.now() is the host's clock at the start of the
// call, moved forward whenever a host call returns; Math.random and crypto draw from a ChaCha20 stream keyed
// by the host's recorded seed. So a replay that feeds back the recorded clock and seed sees the same values.
import vm from "node:vm";
import { stripTypeScriptTypes } from "node:module";

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const sources = new Map(); // sha -> JavaScript
let spareContext = null; // prepared between calls, off the request's path
const pending = new Map(); // call id -> {resolve, reject}
let lastCallId = 0;

// -- the pipes ----------------------------------------------------------------------------------------------

const stdin = Deno.stdin.readable.pipeThrough(new TextDecoderStream()).getReader();
let buffered = "";
async function readMessage() {
  for (;;) {
    const newline = buffered.indexOf("\n");
    if (newline >= 0) {
      const line = buffered.slice(0, newline);
      buffered = buffered.slice(newline + 1);
      return JSON.parse(line);
    }
    const { value, done } = await stdin.read();
    if (done) Deno.exit(0);
    buffered += value;
  }
}
function send(message) {
  const bytes = encoder.encode(JSON.stringify(message) + "\n");
  let written = 0;
  while (written < bytes.length) written += Deno.stdout.writeSync(bytes.subarray(written));
}

// -- recorded randomness: ChaCha20 keyed by the host's 32-byte seed --------------------------------------------

function chacha20Stream(key) {
  const k = new Uint32Array(key.buffer, key.byteOffset, 8);
  const state = new Uint32Array([0x61707865, 0x3320646e, 0x79622d32, 0x6b206574, ...k, 0, 0, 0, 0]);
  const block = new Uint8Array(64);
  const words = new Uint32Array(block.buffer);
  let used = 64;
  const rotl = (v, n) => (v << n) | (v >>> (32 - n));
  function refill() {
    const x = state.slice();
    const qr = (a, b, c, d) => {
      x[a] += x[b]; x[d] = rotl(x[d] ^ x[a], 16);
      x[c] += x[d]; x[b] = rotl(x[b] ^ x[c], 12);
      x[a] += x[b]; x[d] = rotl(x[d] ^ x[a], 8);
      x[c] += x[d]; x[b] = rotl(x[b] ^ x[c], 7);
    };
    for (let i = 0; i < 10; i++) {
      qr(0, 4, 8, 12); qr(1, 5, 9, 13); qr(2, 6, 10, 14); qr(3, 7, 11, 15);
      qr(0, 5, 10, 15); qr(1, 6, 11, 12); qr(2, 7, 8, 13); qr(3, 4, 9, 14);
    }
    for (let i = 0; i < 16; i++) words[i] = x[i] + state[i];
    state[12]++;
    used = 0;
  }
  return function fill(target) {
    for (let i = 0; i < target.length; i++) {
      if (used === 64) refill();
      target[i] = block[used++];
    }
    return target;
  };
}

// -- one call -------------------------------------------------------------------------------------------------

// An ordinary global object (no interceptors) is the cheaper context where this Deno offers it.
const CONTEXT_KIND = vm.constants?.DONT_CONTEXTIFY;

function newContext() {
  return vm.createContext(CONTEXT_KIND ?? {});
}

async function run(message) {
  const context = spareContext ?? newContext();
  spareContext = null;
  let clock = message.now;
  const startedAt = message.now;
  const fill = chacha20Stream(Uint8Array.from(atob(message.seed), (c) => c.charCodeAt(0)));

  async function hostCall(op, args) {
    const id = ++lastCallId;
    const answered = new Promise((resolve) => pending.set(id, resolve));
    send({ type: "call", id, op, args: args === undefined ? null : args });
    const reply = await answered;
    clock = Math.max(clock, reply.now);
    if (!reply.answer.ok) {
      const error = new Error(reply.answer.error.message);
      error.name = "FluxError";
      error.code = reply.answer.error.code;
      if (reply.answer.error.problems) error.problems = reply.answer.error.problems; // a refused query's
      throw error;
    }
    return reply.answer.value;
  }
  const host = {
    now: () => clock,
    sinceStart: () => clock - startedAt,
    fill: (array) => fill(new Uint8Array(array.buffer, array.byteOffset, array.byteLength)) && array,
    random: () => {
      const bytes = fill(new Uint8Array(7));
      let value = 0;
      for (let i = 0; i < 7; i++) value = value * 256 + bytes[i];
      return (value % 2 ** 53) / 2 ** 53;
    },
    log: (level, parts) => {
      const text = parts.map((part) => (typeof part === "string" ? part : safeJson(part))).join(" ");
      return hostCall("log", { level, message: text });
    },
    decode: (bytes) => decoder.decode(bytes),
    encode: (text) => encoder.encode(text),
  };
  PRELUDE_SCRIPT.runInContext(context)(host);
  const ctx = Object.freeze({
    db: Object.freeze({
      query: (query) => hostCall("db.query", query),
      sql: (sql, params = []) => hostCall("db.sql", { sql, params }),
    }),
    queue: Object.freeze({
      push: (fn, payload = null, options = {}) => hostCall("queue.push", { ...options, function: fn, payload }),
    }),
    fetch: (url, init = {}) => hostCall("fetch", { ...init, url: String(url) }),
    secrets: Object.freeze({ get: (name) => hostCall("secrets.get", { name }) }),
    log: (message, fields) => hostCall("log", { level: "info", message: String(message), fields }),
    now: () => clock,
  });
  try {
    if (message.code !== undefined) {
      sources.set(message.sha, message.lang === "ts" ? stripTypeScriptTypes(message.code) : message.code);
    }
    const source = sources.get(message.sha);
    const module = new vm.SourceTextModule(source, { context, identifier: `functions/${message.sha}` });
    await module.link((specifier) => {
      throw new Error(`import of ${specifier}: a function is one module; bundle its imports first`);
    });
    await module.evaluate();
    const handler = module.namespace.default;
    if (typeof handler !== "function") throw new TypeError("the module has no default export function");
    const value = await handler(PARSE_SCRIPT.runInContext(context)(JSON.stringify(message.request)), ctx);
    let text;
    try {
      text = JSON.stringify(value === undefined ? null : value);
    } catch (error) {
      send({ type: "done", ok: false, error: { ...describe(error), name: "InvalidResponse" } });
      return;
    }
    send({ type: "done", ok: true, value: JSON.parse(text) });
  } catch (error) {
    send({ type: "done", ok: false, error: describe(error) });
  }
}

function describe(error) {
  if (error && typeof error === "object") {
    return {
      name: String(error.name ?? "Error"),
      message: String(error.message ?? error),
      stack: String(error.stack ?? ""),
      code: error.code === undefined ? null : String(error.code),
    };
  }
  return { name: "Error", message: `the function threw ${safeJson(error)}`, stack: "", code: null };
}

function safeJson(value) {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

// Runs inside each fresh context: the globals a function sees, served by the host.
const PRELUDE = `(host) => {
  const RealDate = Date;
  function FluxDate(...args) {
    if (!new.target) return new RealDate(Math.floor(host.now())).toString();
    return args.length ? new RealDate(...args) : new RealDate(Math.floor(host.now()));
  }
  FluxDate.prototype = RealDate.prototype;
  FluxDate.now = () => Math.floor(host.now());
  FluxDate.parse = RealDate.parse;
  FluxDate.UTC = RealDate.UTC;
  Object.defineProperty(RealDate.prototype, "constructor", { value: FluxDate });
  globalThis.Date = FluxDate;
  Math.random = () => host.random();
  const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  globalThis.crypto = Object.freeze({
    getRandomValues: (array) => host.fill(array),
    randomUUID: () => {
      const b = host.fill(new Uint8Array(16));
      b[6] = (b[6] & 0x0f) | 0x40;
      b[8] = (b[8] & 0x3f) | 0x80;
      const h = hex(b);
      return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
    },
  });
  globalThis.performance = Object.freeze({ now: () => host.sinceStart() });
  const log = (level) => (...parts) => { host.log(level, parts).catch(() => {}); };
  globalThis.console = Object.freeze({
    log: log("info"), info: log("info"), debug: log("debug"), warn: log("warn"), error: log("error"),
  });
}`;

// Compiled once; run in each context (the request is parsed there, so its objects are the context's own).
const PRELUDE_SCRIPT = new vm.Script(PRELUDE);
const PARSE_SCRIPT = new vm.Script("(text) => JSON.parse(text)");

// -- the loop -------------------------------------------------------------------------------------------------

send({ type: "ready" });
for (;;) {
  const message = await readMessage();
  if (message.type === "run") {
    run(message).catch((error) => send({ type: "done", ok: false, error: describe(error) })).finally(() => {
      spareContext ??= newContext();
    });
  } else if (message.type === "reply") {
    pending.get(message.id)?.(message);
    pending.delete(message.id);
  }
}
