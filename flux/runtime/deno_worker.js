// The Deno side of flux/runtime/deno.py: runs one function call at a time, each in a fresh node:vm context
// (fresh globals: nothing an earlier request left behind is visible). Messages are JSON lines:
//   in:  {type: "run", run, code?, sha, lang, request, now, seed}   {type: "reply", id, answer, now}
//   out: {type: "ready"}   {type: "call", run, id, op, args}   {type: "done", ok, value | error}
// Calls may overlap (Promise.all); the host answers them in the order they were sent.
// Time and randomness inside a call come from the host: Date.now() is the host's clock at the start of the
// call, moved forward whenever a host call returns; Math.random and crypto draw from a ChaCha20 stream keyed
// by the host's recorded seed. So a replay that feeds back the recorded clock and seed sees the same values.
//
// Isolation (docs/functions.md): a function is hostile code. Everything it can touch is made inside its own
// context (its ctx, every answer and error of a host call, the promises it awaits), so no object of this
// process's realm is reachable from it; the only functions of this realm it could reach are held in closures
// of the prelude and called with primitives. This realm is tamed besides (no code from strings, frozen
// intrinsics), so a way in found later would reach nothing to change. Every host call names its run; a run
// ends only when no call it made is pending (calls a function forgot to await are drained into its own
// request), and a run that has ended can make no call.
import vm from "node:vm";
import { stripTypeScriptTypes } from "node:module";
import { setImmediate } from "node:timers";

const encoder = new TextEncoder();
const sources = new Map(); // sha -> JavaScript
let spareContext = null; // {context, serving, start, fail}, prepared between calls, off the request's path
const pending = new Map(); // call id -> what to do with its reply
let lastCallId = 0;
let current = null; // the run in progress, if any

// -- where a run's time goes (only with --phases) -------------------------------------------------------------

const PHASES = Deno.args.includes("--phases");
let phases = {}; // name -> microseconds, since the last done
let phaseStarted = 0;
function phaseStart() {
  if (PHASES) phaseStarted = performance.now();
}
function phaseEnd(name) {
  if (!PHASES) return;
  const now = performance.now();
  phases[name] = (phases[name] ?? 0) + (now - phaseStarted) * 1000;
  phaseStarted = now;
}
function donePhases(message) {
  if (!PHASES) return message;
  message.phases = phases;
  phases = {};
  return message;
}

// -- the pipes ----------------------------------------------------------------------------------------------

const decoder = new TextDecoder();
const chunk = new Uint8Array(1 << 16);
let buffered = "";
let scanned = 0; // how much of `buffered` holds no newline: a long line is read in linear time
async function readMessage() {
  for (;;) {
    const newline = buffered.indexOf("\n", scanned);
    if (newline >= 0) {
      const line = buffered.slice(0, newline);
      buffered = buffered.slice(newline + 1);
      scanned = 0;
      return JSON.parse(line);
    }
    scanned = buffered.length;
    // Straight from the pipe: a web stream (with a TextDecoderStream) costs several promises a chunk.
    const count = await Deno.stdin.read(chunk);
    if (count === null) Deno.exit(0);
    buffered += decoder.decode(chunk.subarray(0, count), { stream: true });
  }
}
function send(message) {
  writeLine(JSON.stringify(message));
}
function writeLine(text) {
  const bytes = encoder.encode(text + "\n");
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

// A fresh context with the prelude run in it, made between calls, off the request's path. The functions the
// prelude keeps reach the run the context is given (`serving.run`), and only it: a context serves one run.
function prepareContext() {
  const context = vm.createContext(CONTEXT_KIND ?? {});
  const serving = { run: null };
  const prelude = PRELUDE_SCRIPT.runInContext(context)(
    (op, argsText, settle) => hostCall(serving.run, op, argsText, settle),
    () => serving.run.clock,
    () => serving.run.clock - serving.run.startedAt,
    (count) => {
      const bytes = serving.run.fill(new Uint8Array(Math.min(count >>> 0, 65536)));
      let text = "";
      for (let i = 0; i < bytes.length; i++) text += String.fromCharCode(bytes[i]);
      return text;
    },
    (ok, a, b, c, d) => serving.run.finish({ ok, a, b, c, d }),
  );
  return { context, serving, start: prelude.start, fail: prelude.fail };
}

async function run(message) {
  phaseStart();
  const { context, serving, start, fail } = spareContext ?? prepareContext();
  spareContext = null;
  phaseEnd("context on the request's path");
  let finish;
  const outcome = new Promise((resolve) => (finish = resolve));
  const thisRun = serving.run = current = {
    id: message.run, open: true, unhandled: new Set(), outstanding: 0, idle: null, finish,
    clock: message.now, startedAt: message.now,
    fill: chacha20Stream(Uint8Array.from(atob(message.seed), (c) => c.charCodeAt(0))),
  };
  try {
    if (message.code !== undefined) {
      sources.set(message.sha, message.lang === "ts" ? stripTypeScriptTypes(message.code) : message.code);
    }
    const source = sources.get(message.sha);
    const module = new vm.SourceTextModule(source, { context, identifier: `functions/${message.sha}` });
    const imports = module.moduleRequests;
    if (imports.length > 0) {
      throw new Error(`import of ${imports[0].specifier}: a function is one module; bundle its imports first`);
    }
    // Linked and instantiated at once, not through `link`, whose promise settles a turn of the event loop later.
    module.linkRequests([]);
    module.instantiate();
    await module.evaluate();
    phaseEnd("module: compile, link, evaluate");
    const handler = module.namespace.default;
    if (typeof handler !== "function") throw new TypeError("the module has no default export function");
    start(handler, JSON.stringify(message.request));
  } catch (error) {
    // What the module threw is the function's value: only the prelude, in its context, looks into it.
    fail(error);
  }
  const { ok, a, b, c, d } = await outcome;
  phaseEnd("handler, host calls included");
  await drain(thisRun);
  phaseEnd("drain");
  if (ok && thisRun.unhandled.size > 0) send(donePhases({ type: "done", ok: false, error: UNHANDLED }));
  else if (ok) {
    // The value's JSON text, as the context's own JSON.stringify (kept by the prelude before the function ran)
    // made it, goes out as it is: parsed here only to be written again, it cost a run twice its size's work.
    const phasesText = PHASES ? `,"phases":${JSON.stringify(donePhases({}).phases)}` : "";
    writeLine(`{"type":"done","ok":true,"value":${a}${phasesText}}`);
  }
  else send(donePhases({ type: "done", ok: false, error: { name: a, message: b, stack: c, code: d } }));
}

const UNHANDLED = {
  name: "Error",
  message: "a promise of the function was rejected and nothing handled it: await it, or add .catch()",
  stack: "",
  code: null,
};

// One host call of `thisRun`, from the prelude's ctx: the op's name and its arguments as JSON text. `settle` is
// the context's own function, given only primitives: (true, answer JSON) or (false, code, message, problems).
function hostCall(thisRun, op, argsText, settle) {
  if (!thisRun?.open) {
    settle(false, "FX300", "this function's run has ended: a host call must be made while its request runs", "null");
    return;
  }
  const id = ++lastCallId;
  const line = `{"type":"call","run":${JSON.stringify(thisRun.id)},"id":${id},"op":${JSON.stringify(op)},"args":${argsText}}`;
  writeLine(line); // first: if it throws, nothing waits for an answer that never comes
  pending.set(id, (reply) => {
    thisRun.outstanding--;
    thisRun.clock = Math.max(thisRun.clock, reply.now);
    const answer = reply.answer;
    try {
      if (answer.ok) settle(true, JSON.stringify(answer.value ?? null));
      else {
        const error = answer.error;
        settle(false, String(error.code), String(error.message), JSON.stringify(error.problems ?? null));
      }
    } catch {
      // The context's function: what it threw is the function's, and stays there.
    } finally {
      if (thisRun.outstanding === 0) thisRun.idle?.();
    }
  });
  thisRun.outstanding++;
}

// Wait until no host call of the run is pending and no job it queued is left, then close it: calls a function
// did not await (`ctx.log(...)` without `await`, a `.then` chain) are made and answered in its own request.
// A chain that never ends is bounded by the run's deadline, which costs the process (deno.py).
async function drain(thisRun) {
  for (;;) {
    if (thisRun.outstanding > 0) {
      await new Promise((resolve) => (thisRun.idle = resolve));
      thisRun.idle = null;
      continue;
    }
    // A turn of the event loop: every job queued so far, and every job those queued, has run by then.
    // (setImmediate, not setTimeout: Deno's shortest timer costs about 2 ms, an immediate about 6 us.)
    await new Promise((resolve) => setImmediate(resolve));
    if (thisRun.outstanding === 0) break;
  }
  thisRun.open = false;
}

// Runs inside each fresh context before the function's module, with this realm's functions as arguments; it
// keeps them in its closures and gives the function only objects of the context. Returns `start(handler,
// requestText)`, which calls the handler and settles the run with primitives, and `fail(error)`, which settles
// it with what the function's module threw, looked into inside the context.
const PRELUDE = `(hostCallOf, hostNowOf, hostSinceStartOf, hostRandomBytesOf, settleRunOf) => {
  "use strict";
  const { parse, stringify } = JSON;
  const { apply } = Reflect;
  const { freeze, defineProperty } = Object;
  const PromiseOf = Promise, then = Promise.prototype.then, resolveWith = Promise.resolve;
  const ErrorOf = Error, StringOf = String, TypeErrorOf = TypeError, RangeErrorOf = RangeError;
  // The worker's functions, each behind a wall: whatever one throws (a stack overflow reached inside it, made
  // in the worker's realm) never reaches the function; it gets an error of its own context instead. Fixed
  // arity, no spread: the context's iterators are the function's to patch.
  const walled = (f) => (a, b, c, d, e) => {
    try {
      return f(a, b, c, d, e);
    } catch {
      throw new RangeErrorOf("Maximum call stack size exceeded");
    }
  };
  const hostCall = walled(hostCallOf), hostNow = walled(hostNowOf), hostSinceStart = walled(hostSinceStartOf);
  const hostRandomBytes = walled(hostRandomBytesOf), settleRun = walled(settleRunOf);
  const named = (object, name, value) =>
    defineProperty(object, name, { value, writable: true, enumerable: false, configurable: true });
  const bytes = (count) => {
    if (count > 65536) throw new RangeError("at most 65536 random bytes a call");
    const text = hostRandomBytes(count);
    const out = new Uint8Array(count);
    for (let i = 0; i < count; i++) out[i] = text.charCodeAt(i);
    return out;
  };

  function call(op, args) {
    let text;
    try {
      text = stringify(args === undefined ? null : args);
    } catch (error) {
      return PromiseOf.reject(error);
    }
    return new PromiseOf((resolve, reject) => hostCall(op, text ?? "null", (ok, value, message, problems) => {
      if (ok) return resolve(parse(value));
      const error = new ErrorOf(message);
      named(error, "name", "FluxError"); // defined, not assigned: a setter the function put on a prototype
      named(error, "code", value); // never runs on the worker's stack
      const list = parse(problems);
      if (list) named(error, "problems", list); // a refused query's
      reject(error);
    }));
  }
  const now = () => hostNow();
  const ctx = freeze({
    db: freeze({
      query: (query) => call("db.query", query),
      sql: (sql, params = []) => call("db.sql", { sql, params }),
    }),
    queue: freeze({
      push: (fn, payload = null, options = {}) => call("queue.push", { ...options, function: fn, payload }),
    }),
    fetch: (url, init = {}) => call("fetch", { ...init, url: StringOf(url) }),
    secrets: freeze({ get: (name) => call("secrets.get", { name }) }),
    log: (message, fields) => call("log", { level: "info", message: StringOf(message), fields }),
    now,
  });

  // The clock: the host's, moved forward by each host call.
  const RealDate = Date;
  function FluxDate(...args) {
    if (!new.target) return new RealDate(Math.floor(hostNow())).toString();
    return args.length ? new RealDate(...args) : new RealDate(Math.floor(hostNow()));
  }
  FluxDate.prototype = RealDate.prototype;
  FluxDate.now = () => Math.floor(hostNow());
  FluxDate.parse = RealDate.parse;
  FluxDate.UTC = RealDate.UTC;
  defineProperty(RealDate.prototype, "constructor", { value: FluxDate });
  globalThis.Date = FluxDate;
  // Temporal reads the real clock, and replacing its Now would cost every run about 350 us (V8 builds Temporal
  // when it is first touched), so functions have none: Date is the recorded clock.
  delete globalThis.Temporal;
  const formatOf = Object.getOwnPropertyDescriptor(Intl.DateTimeFormat.prototype, "format").get;
  defineProperty(Intl.DateTimeFormat.prototype, "format", {
    configurable: true,
    get() {
      const format = apply(formatOf, this, []);
      return (date) => format(date === undefined ? Math.floor(hostNow()) : date);
    },
  });
  const formatToParts = Intl.DateTimeFormat.prototype.formatToParts;
  Intl.DateTimeFormat.prototype.formatToParts = function (date) {
    return apply(formatToParts, this, [date === undefined ? Math.floor(hostNow()) : date]);
  };

  // Randomness: the host's recorded stream.
  Math.random = () => {
    const b = bytes(7);
    let value = 0;
    for (let i = 0; i < 7; i++) value = value * 256 + b[i];
    return (value % 2 ** 53) / 2 ** 53;
  };
  const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  globalThis.crypto = freeze({
    getRandomValues: (array) => {
      const view = new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
      view.set(bytes(view.length));
      return array;
    },
    randomUUID: () => {
      const b = bytes(16);
      b[6] = (b[6] & 0x0f) | 0x40;
      b[8] = (b[8] & 0x3f) | 0x80;
      const h = hex(b);
      return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
    },
  });
  globalThis.performance = freeze({ now: () => hostSinceStart() });

  const log = (level) => (...parts) => {
    const text = parts.map((part) => {
      if (typeof part === "string") return part;
      try { return stringify(part) ?? StringOf(part); } catch { return StringOf(part); }
    }).join(" ");
    apply(then, call("log", { level, message: text }), [undefined, () => {}]);
  };
  globalThis.console = freeze({
    log: log("info"), info: log("info"), debug: log("debug"), warn: log("warn"), error: log("error"),
  });

  // Nothing may run after the run: no timers, no finalizers, no waits that wake later. Call sites stay
  // unreachable: they are objects of the worker's realm.
  const noTimers = (name) => () => {
    throw new TypeErrorOf(name + " is not available in a Flux function: a run ends with its handler; await host calls instead");
  };
  for (const name of ["setTimeout", "setInterval", "setImmediate"]) globalThis[name] = noTimers(name);
  for (const name of ["clearTimeout", "clearInterval", "clearImmediate"]) globalThis[name] = () => {};
  globalThis.FinalizationRegistry = class FinalizationRegistry {
    register() {}
    unregister() { return false; }
  };
  delete Atomics.waitAsync;
  // Symbol.for's registry is the process's, never collected: a run could fill the heap for every later one.
  // Each run has a registry of its own.
  const registry = Object.create(null), keys = Object.create(null), SymbolOf = Symbol;
  Symbol.for = function (key) {
    const name = StringOf(key);
    return registry[name] ?? (keys[registry[name] = SymbolOf(name)] = name, registry[name]);
  };
  Symbol.keyFor = function (symbol) {
    if (typeof symbol !== "symbol") throw new TypeErrorOf(StringOf(symbol) + " is not a symbol");
    return keys[symbol];
  };
  // WebAssembly's own compile and instantiate finish on a later turn of the event loop, after the run may have
  // ended: here they compile at once, inside the run.
  const Wasm = WebAssembly, WasmModule = Wasm.Module, WasmInstance = Wasm.Instance;
  Wasm.compile = (bytes) => new PromiseOf((resolve) => resolve(new WasmModule(bytes)));
  Wasm.instantiate = (source, imports) => new PromiseOf((resolve) => {
    if (source instanceof WasmModule) return resolve(new WasmInstance(source, imports));
    const module = new WasmModule(source);
    resolve({ module, instance: new WasmInstance(module, imports) });
  });
  delete Wasm.compileStreaming;
  delete Wasm.instantiateStreaming;
  defineProperty(ErrorOf, "prepareStackTrace", { value: undefined, writable: false, configurable: false });

  function fail(error) {
    let name = "Error", message = "", stack = "", code = null;
    try {
      if (error !== null && (typeof error === "object" || typeof error === "function")) {
        name = StringOf(error.name ?? "Error");
        message = StringOf(error.message ?? error);
        stack = StringOf(error.stack ?? "");
        code = error.code === undefined ? null : StringOf(error.code);
      } else {
        message = "the function threw " + (stringify(error) ?? StringOf(error));
      }
    } catch {
      message = "the function threw a value that cannot be shown";
    }
    settleRun(false, name, message, stack, code);
  }
  const start = (handler, requestText) => {
    let result;
    try {
      result = handler(parse(requestText), ctx);
    } catch (error) {
      return fail(error);
    }
    apply(then, apply(resolveWith, PromiseOf, [result]), [(value) => {
      let text;
      try {
        text = stringify(value === undefined ? null : value);
      } catch (error) {
        return settleRun(false, "InvalidResponse", StringOf(error?.message ?? error), "", null);
      }
      settleRun(true, text ?? "null");
    }, fail]);
  };
  return { start, fail };
}`;

const PRELUDE_SCRIPT = new vm.Script(PRELUDE);

// -- this realm, tamed ------------------------------------------------------------------------------------------

// Nothing of this realm should be reachable from a function; if a way is found, it must lead nowhere: no code
// from strings (the constructors of every kind of function throw) and no change to a shared intrinsic.
function tameThisRealm() {
  const refuse = function () {
    throw new TypeError("code from strings is not allowed in the Flux worker");
  };
  for (const sample of [function () {}, async function () {}, function* () {}, async function* () {}]) {
    Object.defineProperty(Object.getPrototypeOf(sample), "constructor", { value: refuse, writable: false });
  }
  const frozen = new Set();
  const freeze = (value) => {
    if ((typeof value !== "object" && typeof value !== "function") || value === null || frozen.has(value)) return;
    frozen.add(value);
    Object.freeze(value);
    for (const key of Reflect.ownKeys(value)) {
      const property = Object.getOwnPropertyDescriptor(value, key);
      if (property) for (const part of [property.value, property.get, property.set]) freeze(part);
    }
    freeze(Object.getPrototypeOf(value));
  };
  for (const name of INTRINSICS) freeze(globalThis[name]);
  // The intrinsics no global names, which this realm's own code uses (array destructuring calls the array
  // iterator's `next`): frozen through an object of each kind.
  const samples = [
    [][Symbol.iterator](), ""[Symbol.iterator](), new Map().entries(), new Set().values(), /a/[Symbol.matchAll](""),
    (function* () {})(), (async function* () {})(), [].values().map((x) => x), Iterator.from({ next() {} }),
    new Intl.Segmenter().segment("")[Symbol.iterator](), new Intl.Segmenter().segment(""),
  ];
  for (const sample of samples) freeze(sample);
  Object.freeze(samples);
}
const INTRINSICS = [
  "Object", "Function", "Array", "Promise", "JSON", "Math", "Reflect", "Error", "TypeError", "RangeError",
  "SyntaxError", "String", "Number", "Boolean", "Symbol", "BigInt", "Map", "Set", "WeakMap", "WeakSet", "RegExp",
  "Date", "ArrayBuffer", "Uint8Array", "DataView", "Iterator", "AggregateError", "EvalError", "ReferenceError",
  "URIError", "SuppressedError", "Int8Array", "Uint16Array", "Int16Array", "Uint32Array", "Int32Array",
  "BigUint64Array", "BigInt64Array", "Uint8ClampedArray", "Float16Array", "Float32Array", "Float64Array",
  "SharedArrayBuffer", "Atomics", "Proxy", "WeakRef", "FinalizationRegistry", "Intl", "WebAssembly",
  "DisposableStack", "AsyncDisposableStack",
];

// -- the loop -------------------------------------------------------------------------------------------------

// A promise a function left rejected with nothing to handle it would end this process (Deno's default): it
// fails its run instead, unless the function handles it before it returns. (One of no open run is dropped.)
globalThis.addEventListener("unhandledrejection", (event) => {
  event.preventDefault();
  if (current?.open) current.unhandled.add(event.promise);
});
globalThis.addEventListener("rejectionhandled", (event) => {
  current?.unhandled.delete(event.promise);
});
tameThisRealm();
send({ type: "ready" });
for (;;) {
  const message = await readMessage();
  if (message.type === "run") {
    run(message).catch((error) => send({ type: "done", ok: false, error: { name: "Error", message: String(error) } })).finally(() => {
      phaseStart();
      spareContext ??= prepareContext();
      phaseEnd("context prepared after the run");
    });
  } else if (message.type === "reply") {
    pending.get(message.id)?.(message);
    pending.delete(message.id);
  } else if (message.type === "ping") {
    send({ type: "pong" });
  }
}
