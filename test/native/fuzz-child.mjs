// Fuzzes the addon's raw entry points (src/addon.cc, src/ops.cc) in a process of its own:
// thousands of calls with random, malformed and hostile arguments (wrong types, shapes that
// overrun buffers, freed ids, detached and shared buffers, getters that free buffers or
// detach arrays mid-call, sync and async). Every call must return or throw an Error whose
// code is one of CutlossError's; no input, host or device, may change. A crash kills this
// process, which fails the test that runs it. Prints one JSON summary line.
//   node test/native/fuzz-child.mjs [calls] [seed]
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const root = fileURLToPath(new URL('../..', import.meta.url));
const addon = require('node-gyp-build')(root);

const CALLS = Number(process.argv[2] ?? 4000);
let seed = Number(process.argv[3] ?? 1) >>> 0 || 1;
const CODES = new Set(['E_SHAPE', 'E_DTYPE', 'E_LABEL', 'E_OPTION', 'E_DISPOSED', 'E_BACKEND', 'E_OOM', 'E_INTERNAL']);
const GETTER_ERROR = 'thrown by a fuzz getter';

// ---------------------------------------------------------------- randomness

function next() {
  seed ^= seed << 13;
  seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  seed >>>= 0;
  return seed / 2 ** 32;
}
const int = (n) => Math.floor(next() * n);
const pick = (list) => list[int(list.length)];
const chance = (p) => next() < p;

// ---------------------------------------------------------------- what the fuzzer holds

/** Device buffers it owns: id → their bytes when created, compared after every call. */
const buffers = new Map();
/** Ids it freed (stale handles to pass back). */
const freed = [];
/** Host arrays passed to the current call, with their bytes before it. */
let hostInputs = [];

function bytesOf(view) {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength).slice();
}

function newBuffer() {
  const n = int(48);
  const data = chance(0.5) ? new Float32Array(n).map(() => (next() - 0.5) * 20) : new Uint16Array(n).map(() => 0x3f80 + int(0x400));
  const id = addon.upload(0, data);
  buffers.set(id, bytesOf(data));
  return id;
}

function forget(id) {
  if (buffers.delete(id)) freed.push(id);
}

function liveId() {
  if (buffers.size === 0 || chance(0.1)) return newBuffer();
  return pick([...buffers.keys()]);
}

function hostInput(view) {
  hostInputs.push({ view, bytes: view.buffer.byteLength === 0 && view.byteLength === 0 ? new Uint8Array(0) : bytesOf(view) });
  return view;
}

// ---------------------------------------------------------------- argument generators

const TYPED = [Int8Array, Uint8Array, Uint8ClampedArray, Int16Array, Uint16Array, Int32Array, Uint32Array, Float32Array, Float64Array];

function detachedArray(Type = pick(TYPED)) {
  const a = new Type(4);
  structuredClone(a.buffer, { transfer: [a.buffer] });
  return a;
}

function sharedArray(Type = pick(TYPED)) {
  return new Type(new SharedArrayBuffer(Type.BYTES_PER_ELEMENT * (1 + int(16))));
}

function typedArray(Type, n, fill) {
  const a = new Type(n);
  for (let i = 0; i < n; i++) a[i] = fill(i);
  if (chance(0.1)) {
    // a view into the middle of a larger buffer
    const big = new Type(n + 8);
    big.set(a, 3);
    return hostInput(big.subarray(3, 3 + n));
  }
  return hostInput(a);
}

function hostileObject() {
  return pick([
    () => new Proxy({}, { get() { throw new Error(GETTER_ERROR); } }),
    () => ({ get id() { throw new Error(GETTER_ERROR); }, dtype: 0, rows: 1, cols: 1 }),
    () => Object.create(null),
    () => [1, 2, 3],
    () => new DataView(new ArrayBuffer(8)),
    () => new ArrayBuffer(16),
  ])();
}

/** Anything at all. */
function anyValue() {
  return pick([
    () => undefined, () => null, () => true, () => false,
    () => 0, () => 1, () => -1, () => 0.5, () => NaN, () => Infinity, () => -Infinity, () => 2 ** 31, () => 2 ** 53,
    () => 2 ** 60, () => -0, () => 1e-45, () => int(100),
    () => liveId(), () => (freed.length > 0 ? pick(freed) : 123456789),
    () => 'x', () => '1', () => Symbol('s'), () => 10n, () => () => 1, () => ({}),
    () => typedArray(pick(TYPED), int(12), () => int(256)), () => detachedArray(), () => sharedArray(),
    () => hostileObject(),
  ])();
}

const maybe = (good, p = 0.08) => (chance(p) ? anyValue() : good());

/** A matrix over a live buffer: usually fitting it, sometimes not, sometimes with hostile getters. */
function matrix(shapeLike) {
  if (chance(0.02)) return hostileObject();
  const id = liveId();
  const bytes = buffers.get(id).length;
  const dtype = chance(0.5) ? 0 : 1;
  const size = dtype === 1 ? 2 : 4;
  let rows;
  let cols;
  if (shapeLike !== undefined) {
    ({ rows, cols } = shapeLike);
  } else if (chance(0.85)) {
    const elements = Math.floor(bytes / size);
    cols = 1 + int(Math.max(1, Math.min(elements, 12)));
    rows = Math.floor(elements / cols);
  } else {
    rows = pick([0, 1, 2, 3, 1000, 2 ** 31, -1, 1.5, NaN]);
    cols = pick([0, 1, 5, 64, 2 ** 31 - 1, 2 ** 40, -3]);
  }
  const m = { id, dtype: maybe(() => dtype, 0.03), rows: maybe(() => rows, 0.03), cols: maybe(() => cols, 0.03) };
  if (chance(0.04)) {
    // frees a buffer while the call reads its arguments
    const victim = liveId();
    return { id: m.id, rows: m.rows, cols: m.cols, get dtype() { addon.free(victim); forget(victim); return dtype; } };
  }
  if (chance(0.03)) {
    // detaches this call's host arrays (those of later arguments too) while it reads them
    const victims = hostInputs;
    return {
      id: m.id, dtype, cols,
      get rows() {
        for (const v of victims) if (v.view.buffer.byteLength > 0) structuredClone(v.view.buffer, { transfer: [v.view.buffer] });
        return rows;
      },
    };
  }
  return m;
}

const sameShape = (x) => (typeof x === 'object' && x !== null && 'rows' in x && typeof x.rows === 'number' && typeof x.cols === 'number'
  ? { rows: x.rows, cols: x.cols } : undefined);
const elementCount = (x) => { const s = sameShape(x); return s && Number.isSafeInteger(s.rows * s.cols) && s.rows * s.cols < 4096 ? s.rows * s.cols : int(8); };

const positive = () => pick([1, 0.5, 2, 1e-3, 37.5]);
const bool = () => chance(0.5);
const seedValue = () => pick([0, 1, 2 ** 32 + 5, 2 ** 53 - 1, int(1000)]);

function mask(x) {
  if (chance(0.5)) return null;
  const s = sameShape(x);
  const n = s && chance(0.5) ? s.cols : elementCount(x);
  return typedArray(Uint8Array, Number.isSafeInteger(n) && n >= 0 && n < 4096 ? n : 3, () => int(2));
}

function lossParams() {
  const p = {
    normalizer: int(3), smoothing: pick([0, 0.1, 0.5]), focalGamma: pick([0, 0.5, 2]), polyEpsilon: pick([0, 1, -0.5]),
    zLoss: pick([0, 1e-3]), squentropy: int(2), softcap: pick([0, 5, 30]), invTemperature: pick([1, 2, 0.5]),
    ignoreIndex: pick([-100, 0, -1]),
  };
  if (chance(0.15)) p[pick(Object.keys(p))] = anyValue();
  if (chance(0.03)) return anyValue();
  return p;
}

function labels(x) {
  const s = sameShape(x);
  const n = s && Number.isSafeInteger(s.rows) && s.rows >= 0 && s.rows < 4096 ? s.rows : int(5);
  const V = s && Number.isSafeInteger(s.cols) && s.cols > 0 ? s.cols : 3;
  return typedArray(Int32Array, chance(0.9) ? n : n + 1, () => (chance(0.95) ? int(V) : pick([-100, V, -1, 2 ** 31 - 1])));
}

function floats(n) {
  return typedArray(Float32Array, n, () => (next() - 0.5) * 4);
}

/** Loss forward states the fuzzer holds for backward calls. */
const states = [];

/** Each entry point with a generator of plausible arguments; any argument may be replaced. */
const ENTRIES = {
  alloc: () => [maybe(() => 0), pick([0, 1, 16, 1000, 2 ** 53, 2 ** 45, -1, 1.5])],
  upload: () => [maybe(() => pick([0, 0, 0, 1])), maybe(() => typedArray(pick(TYPED), int(20), () => int(100)), 0.3)],
  download: () => {
    const id = liveId();
    const n = buffers.get(id).length;
    return [maybe(() => id), maybe(() => new Uint8Array(chance(0.8) ? n : n + 1), 0.2)];
  },
  free: () => [anyValue()],
  byteLength: () => [maybe(() => liveId(), 0.5)],
  stats: () => [],
  cudaStatus: () => [],
  setEmulatorOrder: () => [maybe(() => int(3)), maybe(() => seedValue())],
  logSumExp: () => { const x = matrix(); return [x, maybe(positive), maybe(() => mask(x))]; },
  softmax: () => { const x = matrix(); return [x, maybe(positive), maybe(() => mask(x)), maybe(bool)]; },
  softmaxBackward: () => { const x = matrix(); return [x, matrix(sameShape(x)), maybe(positive), maybe(() => mask(x)), maybe(bool)]; },
  stablemax: () => [matrix(), maybe(bool)],
  stablemaxBackward: () => { const x = matrix(); return [x, matrix(sameShape(x)), maybe(bool)]; },
  sparsemax: () => [matrix()],
  sparsemaxBackward: () => { const x = matrix(); return [x, matrix(sameShape(x))]; },
  entmax15: () => [matrix()],
  entmax15Backward: () => { const x = matrix(); return [x, matrix(sameShape(x))]; },
  gumbelSoftmax: () => [matrix(), maybe(positive), maybe(bool), maybe(seedValue)],
  gumbelSoftmaxBackward: () => { const x = matrix(); return [x, matrix(sameShape(x)), maybe(positive), maybe(seedValue)]; },
  crossEntropyForward: () => {
    const x = matrix();
    const s = sameShape(x);
    const V = s && Number.isSafeInteger(s.cols) && s.cols > 0 && s.cols < 4096 ? s.cols : 3;
    return [x, maybe(() => labels(x)), lossParams(), maybe(() => (chance(0.5) ? null : floats(chance(0.9) ? V : V + 1)))];
  },
  crossEntropyBackward: () => {
    const st = states.length > 0 && chance(0.9) ? pick(states) : null;
    const n = st !== null ? st.rows : int(5);
    return [maybe(() => (st !== null ? st.state : anyValue())), maybe(() => floats(chance(0.9) ? n : n + 2)), maybe(() => floats(n))];
  },
};

// ---------------------------------------------------------------- checks

const summary = { calls: 0, async: 0, returned: {}, errors: {}, getterErrors: 0, failures: [] };

function fail(what) {
  if (summary.failures.length < 20) summary.failures.push(what);
}

function checkError(name, e) {
  if (e instanceof Error && e.message === GETTER_ERROR) {
    summary.getterErrors++;
    return;
  }
  const code = e && typeof e === 'object' ? e.code : undefined;
  if (!(e instanceof Error) || !CODES.has(code)) {
    fail(`${name}: threw something uncoded: ${String(e && e.stack ? e.stack : e)}`);
    return;
  }
  summary.errors[code] = (summary.errors[code] ?? 0) + 1;
}

/** Keeps or frees what an op returned: ids of new buffers, or the loss forward's ids and state. */
function adoptResult(name, args, r) {
  summary.returned[name] = (summary.returned[name] ?? 0) + 1;
  if (name === 'free') {
    if (r === true) forget(args[0]);
    return;
  }
  if (name === 'alloc' || name === 'upload' || (typeof r === 'number' && name !== 'byteLength')) {
    if (typeof r !== 'number' || !Number.isSafeInteger(r) || r <= 0) return fail(`${name}: returned ${String(r)}`);
    const n = addon.byteLength(r);
    const out = new Uint8Array(n);
    addon.download(r, out);
    if (buffers.size < 24) buffers.set(r, out);
    else addon.free(r);
    return;
  }
  if (name === 'crossEntropyForward') {
    const rows = addon.byteLength(r.lse) / 4;
    for (const k of ['lse', 'weighted', 'unweighted']) addon.free(r[k]);
    states.push({ state: r.state, rows });
    if (states.length > 6) addon.free(states.shift().state);
  }
}

function checkInputs(name) {
  for (const { view, bytes } of hostInputs) {
    if (view.buffer.byteLength === 0 && view.byteLength === 0) continue; // detached on purpose
    const now = bytesOf(view);
    if (now.length !== bytes.length || now.some((b, i) => b !== bytes[i])) fail(`${name}: changed a host input`);
  }
  for (const [id, bytes] of buffers) {
    let now;
    try {
      now = new Uint8Array(addon.byteLength(id));
      addon.download(id, now);
    } catch (e) {
      fail(`${name}: buffer ${id} vanished: ${e.message}`);
      buffers.delete(id);
      continue;
    }
    if (now.length !== bytes.length || now.some((b, i) => b !== bytes[i])) fail(`${name}: changed device buffer ${id}`);
  }
}

// ---------------------------------------------------------------- the run

const names = Object.keys(ENTRIES);
const pending = [];
for (let i = 0; i < CALLS; i++) {
  const name = pick(names);
  hostInputs = [];
  let args;
  try {
    args = ENTRIES[name]();
  } catch (e) {
    fail(`generating ${name}: ${e.stack}`);
    continue;
  }
  if (chance(0.05)) args = args.slice(0, int(args.length + 1)); // too few arguments
  if (chance(0.03)) args.push(anyValue()); // one too many
  const isOp = typeof addon[`${name}Async`] === 'function';
  summary.calls++;
  if (isOp && chance(0.15)) {
    summary.async++;
    let promise;
    try {
      promise = addon[`${name}Async`](...args);
    } catch (e) {
      checkError(name, e);
      checkInputs(name);
      continue;
    }
    if (!(promise instanceof Promise)) {
      fail(`${name}Async returned ${typeof promise}`);
      continue;
    }
    // Sometimes free the inputs while the call runs: the job must keep them alive.
    if (chance(0.3)) {
      for (const a of args) if (a && typeof a === 'object' && typeof a.id === 'number') { addon.free(a.id); forget(a.id); }
    }
    const settled = promise.then((r) => adoptResult(name, args, r), (e) => checkError(name, e));
    if (chance(0.5)) await settled;
    else pending.push(settled);
  } else {
    try {
      adoptResult(name, args, addon[name](...args));
    } catch (e) {
      checkError(name, e);
    }
  }
  checkInputs(name);
}
await Promise.all(pending);

// Everything freed, every job done: no buffer may be left behind.
for (const id of buffers.keys()) addon.free(id);
for (const s of states) addon.free(s.state);
const left = addon.stats();
if (left.buffers !== 0 || left.handles !== 0) fail(`leaked: ${JSON.stringify(left)}`);
console.log(JSON.stringify(summary));
process.exit(summary.failures.length === 0 ? 0 : 1);
