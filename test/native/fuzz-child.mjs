// Fuzzes the addon's raw entry points (src/addon.cc, src/ops.cc, src/sharing.cc, src/cpu/binding.cc) in a process of its own:
// thousands of calls with random, malformed and hostile arguments (wrong types, shapes that
// overrun buffers, freed ids, detached and shared buffers, getters that free buffers or
// detach arrays mid-call, sync and async; caller-provided outputs that are too short, of the
// wrong kind, shared with an input, or the input itself for in-place dLogits). Every call must
// return or throw an Error whose code is one of CutlossError's; no input, host or device, may
// change (outputs are arrays and buffers of their own, or inputs the call no longer tracks). A crash kills this
// process, which fails the test that runs it. Prints one JSON summary line.
//   node test/native/fuzz-child.mjs [calls] [seed]
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const root = fileURLToPath(new URL('../..', import.meta.url));
const addon = require('node-gyp-build')(root);

const CALLS = Number(process.argv[2] ?? 10000);
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
/** Buffers an op may write (outputs, in-place inputs): not compared, freed at the end. */
const untracked = [];

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

/** Stops comparing an input the call may write (in place, or an output that shares its memory). */
function untrack(view) {
  hostInputs = hostInputs.filter((h) => h.view !== view);
}

/** A device buffer the call may write, of `bytes`; freed at the end. */
function outputBuffer(bytes) {
  const id = addon.alloc(0, Math.max(0, Math.min(bytes, 1 << 16)));
  untracked.push(id);
  return id;
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

function linearConfig() {
  const c = { filterEps: pick([0, 2 ** -12, 1e30]), deterministic: bool(), tf32: bool(), gemm: int(3) };
  if (chance(0.3)) c.vocabSplits = pick([0, 1, 2, 64, 65, -1]);
  if (chance(0.1)) c[pick(Object.keys(c))] = anyValue();
  return c;
}

/** Loss forward states the fuzzer holds for backward calls, with their logits matrix. */
const states = [];

const isPlainMatrix = (x) => typeof x === 'object' && x !== null && Object.getPrototypeOf(x) === Object.prototype &&
  ['id', 'dtype', 'rows', 'cols'].every((k) => Object.getOwnPropertyDescriptor(x, k)?.value !== undefined) &&
  [x.rows, x.cols].every((v) => Number.isSafeInteger(v) && v >= 0 && v < 4096) && (x.dtype === 0 || x.dtype === 1);

/**
 * A device output like the matrix `like` ({ id, dtype, rows, cols } or undefined): a buffer of
 * its own (sometimes a row short, or of the other dtype), the matrix itself (in place: its
 * buffer is no longer compared), or anything at all.
 */
function deviceOutput(like, inPlace = true) {
  const r = next();
  if (like === undefined || r < 0.1) return chance(0.5) ? anyValue() : hostileObject();
  const dtype = chance(0.9) ? like.dtype : 1 - like.dtype;
  const rows = chance(0.9) ? like.rows : like.rows + 1;
  // an exported buffer may have a tracked import on the same memory: never written in place
  if (r < 0.75 || !inPlace || exportedIds.has(like.id)) return { id: outputBuffer(rows * like.cols * (dtype === 1 ? 2 : 4)), dtype, rows, cols: like.cols };
  if (buffers.delete(like.id)) untracked.push(like.id);
  return like;
}
/** What exportBuffer returned, for importBuffer calls; and every id it was asked for. */
const exported = [];
const exportedIds = new Set();

function importArgs() {
  const e = exported.length > 0 && chance(0.85) ? pick(exported) : null;
  // Half the views of a real export lie inside it, so imports succeed often enough to be
  // exercised whatever path the random calls before took; the rest go out of bounds.
  const inside = e !== null && chance(0.5);
  const offset = inside ? 4 * int(e.bytes / 4) : pick([0, 0, 4, 8, 2, 2 ** 53]);
  const length = inside ? 4 * (1 + int((e.bytes - offset) / 4)) - 4 : pick([0, 4, 16, 64, 4096, 2 ** 40, 2 ** 53]);
  return [
    maybe(() => pick([0, 0, 0, 1])),
    maybe(() => (e !== null ? e.handle : typedArray(Uint8Array, int(40), () => 45 + int(60)))),
    maybe(() => (e !== null && chance(0.9) ? e.process : pick(['x', '0-0', '']))),
    maybe(() => offset),
    maybe(() => length),
  ];
}

// ---------------------------------------------------------------- the cpu backend (src/cpu/binding.cc)
// Host arrays with explicit shapes, positional: (data, rows, cols, dtype). The only object
// argument is the loss params, whose getters may detach the call's arrays before they are read.

const count = (n, fallback) => (typeof n === 'number' && Number.isSafeInteger(n) && n >= 0 && n < 4096 ? n : fallback);

/** [data, rows, cols, dtype]: usually consistent; sometimes an element short or over, or another kind of array. */
function hostMatrix() {
  const dtype = int(2);
  const rows = chance(0.92) ? int(6) : pick([0, 2 ** 31, -1, 1.5, NaN]);
  const cols = chance(0.92) ? 1 + int(40) : pick([0, 2 ** 31 - 1, 2 ** 40, -3]);
  const n = count(rows * cols, int(8));
  const length = chance(0.9) ? n : pick([n + 1, Math.max(0, n - 1)]);
  const data = dtype === 1
    ? typedArray(Uint16Array, length, () => 0x3f80 + int(0x400))
    : typedArray(Float32Array, length, () => (next() - 0.5) * 20);
  const m = [maybe(() => data, 0.05), maybe(() => rows, 0.03), maybe(() => cols, 0.03), maybe(() => dtype, 0.03)];
  m.elements = n;
  m.N = count(rows, 2);
  m.V = count(cols, 3) || 3;
  return m;
}

const upstreamOf = (m) => floats(chance(0.92) ? m.elements : m.elements + 1);

/** A Float32Array of n elements the call may write (not an input), sometimes of another length. */
const outputArray = (n) => new Float32Array(chance(0.9) ? n : n + 1);

/**
 * cpuCrossEntropy's dLogits output: a new array; the logits themselves (in place); an array
 * sharing the logits' memory a little further on; or anything at all.
 */
function hostOutput(m) {
  const data = m[0];
  const r = next();
  if (r < 0.5) return outputArray(m.elements);
  if (r < 0.7 && data instanceof Float32Array) {
    untrack(data);
    return data;
  }
  if (r < 0.85 && data instanceof Float32Array && data.length > 1) {
    untrack(data);
    const shifted = new Float32Array(data.buffer, data.byteOffset + 4, data.length - 1);
    return chance(0.5) ? shifted : new Float32Array(data.buffer, data.byteOffset, data.length);
  }
  return anyValue();
}
const hostMask = (m) => (chance(0.5) ? null : typedArray(Uint8Array, chance(0.5) ? m.V : m.elements, () => int(2)));

/** Loss params; sometimes with a getter that detaches every host array of this call before the call reads them. */
function cpuParams() {
  const p = lossParams();
  if (!chance(0.05) || typeof p !== 'object' || p === null) return p;
  const victims = hostInputs;
  return {
    ...p,
    get normalizer() {
      for (const v of victims) if (v.view.buffer.byteLength > 0) structuredClone(v.view.buffer, { transfer: [v.view.buffer] });
      return 0;
    },
  };
}

function cpuEntries() {
  const backward = (m, ...rest) => [m[0], maybe(() => upstreamOf(m)), m[1], m[2], m[3], ...rest];
  return {
    cpuLogSumExp: () => { const m = hostMatrix(); return [...m, maybe(positive), maybe(() => hostMask(m))]; },
    cpuSoftmax: () => { const m = hostMatrix(); return [...m, maybe(positive), maybe(() => hostMask(m)), maybe(bool)]; },
    cpuSoftmaxBackward: () => { const m = hostMatrix(); return backward(m, maybe(positive), maybe(() => hostMask(m)), maybe(bool)); },
    cpuStablemax: () => [...hostMatrix(), maybe(bool)],
    cpuStablemaxBackward: () => backward(hostMatrix(), maybe(bool)),
    cpuSparsemax: () => hostMatrix(),
    cpuSparsemaxBackward: () => backward(hostMatrix()),
    cpuEntmax15: () => hostMatrix(),
    cpuEntmax15Backward: () => backward(hostMatrix()),
    cpuGumbelSoftmax: () => [...hostMatrix(), maybe(positive), maybe(bool), maybe(seedValue)],
    cpuGumbelSoftmaxBackward: () => backward(hostMatrix(), maybe(positive), maybe(seedValue)),
    cpuCrossEntropy: () => {
      const m = hostMatrix();
      const { N, V } = m;
      const grad = chance(0.6);
      return [
        ...m, maybe(() => labels({ rows: N, cols: V })), cpuParams(), maybe(() => (chance(0.5) ? null : floats(chance(0.9) ? V : V + 1))),
        maybe(() => (grad ? floats(chance(0.9) ? N : N + 1) : null), 0.04), maybe(() => (grad ? floats(N) : null), 0.04),
        ...(chance(0.4) ? [hostOutput(m)] : []),
      ];
    },
    cpuLinearCrossEntropy: () => {
      const E = hostMatrix();
      const { N, V: D } = E;
      const V = chance(0.95) ? 1 + int(30) : pick([0, -1, 2 ** 31]);
      const wDtype = int(2);
      const nW = count(V * D, 4);
      const W = wDtype === 1 ? typedArray(Uint16Array, chance(0.9) ? nW : nW + 1, () => 0x3f80 + int(0x400))
        : typedArray(Float32Array, chance(0.9) ? nW : nW + 1, () => next() - 0.5);
      const Vc = count(V, 3) || 3;
      const grad = chance(0.6);
      return [
        ...E, maybe(() => W, 0.03), maybe(() => V, 0.02), maybe(() => wDtype, 0.02), maybe(() => labels({ rows: N, cols: Vc }), 0.03),
        cpuParams(), maybe(() => (chance(0.5) ? null : floats(chance(0.95) ? Vc : Vc + 1)), 0.03),
        maybe(() => (chance(0.5) ? null : floats(chance(0.95) ? Vc : Vc + 1)), 0.03),
        maybe(() => (grad ? floats(chance(0.9) ? N : N + 1) : null), 0.04), maybe(() => (grad ? floats(N) : null), 0.04),
        maybe(() => pick([0, 0, 2 ** -12, 1e30])), maybe(() => pick([1, 64, 4 * Vc * 4, 2 ** 26]), 0.05),
        // caller-provided dE, dW, dBias
        ...(chance(0.4) ? [maybe(() => outputArray(N * D)), maybe(() => outputArray(Vc * D)), maybe(() => outputArray(Vc))] : []),
      ];
    },
    cpuSgemm: () => {
      const [M, N, K] = [int(9), int(9), int(9)];
      return [maybe(bool), maybe(bool), maybe(() => M), maybe(() => N), maybe(() => K),
        maybe(() => floats(chance(0.9) ? M * K : M * K + 1)), maybe(() => floats(chance(0.9) ? K * N : K * N + 2))];
    },
    cpuSetThreads: () => [maybe(() => pick([1, 2, 3]), 0.3)],
    cpuSetGemm: () => [maybe(() => pick(['blas', 'portable', 'blas']), 0.2)],
    cpuInfo: () => [],
  };
}

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
  exportBuffer: () => [maybe(() => liveId(), 0.3)],
  importBuffer: importArgs,
  address: () => [maybe(() => liveId(), 0.3)],
  // Only addresses no dtype or length makes valid: the emulator cannot tell a bad host
  // address from a good one, so a wrap that succeeded could crash the next call that reads it.
  // write() is not fuzzed: overwriting device memory is what it is for.
  wrapPointer: () => [maybe(() => pick([0, 1])), pick([0n, -8n, 3n, 4097n, 2n ** 64n, 2n ** 64n - 1n, 4096, 'x', undefined]),
    maybe(() => pick([0, 4, 16, 2 ** 53])), maybe(() => int(2))],
  linearCrossEntropy: () => {
    const E = matrix();
    const s = sameShape(E);
    const N = s && Number.isSafeInteger(s.rows) && s.rows >= 0 && s.rows < 4096 ? s.rows : int(4);
    const D = s && Number.isSafeInteger(s.cols) && s.cols > 0 && s.cols < 4096 ? s.cols : 1 + int(3);
    // W [V, D] over a buffer it fits, most of the time
    const wid = liveId();
    const wDtype = int(2);
    const fits = Math.min(12, Math.floor(buffers.get(wid).length / (wDtype === 1 ? 2 : 4) / D));
    const W = fits >= 1 && chance(0.9) ? { id: wid, dtype: wDtype, rows: fits, cols: D } : matrix();
    const w = sameShape(W);
    const V = w && Number.isSafeInteger(w.rows) && w.rows > 0 && w.rows < 4096 ? w.rows : 3;
    const grad = chance(0.6);
    const args = [
      E, W, maybe(() => labels({ rows: N, cols: V })), lossParams(),
      maybe(() => (chance(0.5) ? null : floats(chance(0.9) ? V : V + 1))), maybe(() => (chance(0.5) ? null : floats(chance(0.9) ? V : V + 1))),
      maybe(linearConfig, 0.04), maybe(() => (grad ? floats(chance(0.9) ? N : N + 1) : null), 0.04),
      maybe(() => (grad ? floats(N) : null), 0.04),
    ];
    if (chance(0.4)) {
      // caller-provided dE and dW: buffers of their own, or the inputs themselves (refused: shared memory)
      const out = (m) => (isPlainMatrix(m) && chance(0.2) ? m : deviceOutput(isPlainMatrix(m) ? m : undefined, false));
      args.push(out(E), out(W));
    }
    return args;
  },
  linearCrossEntropyWorkspaceBytes: () => [
    maybe(() => int(100)), maybe(() => 1 + int(100)), maybe(() => 1 + int(1000)), maybe(() => int(3)), maybe(linearConfig),
    maybe(bool), maybe(() => int(2)), maybe(() => int(2)),
  ],
  crossEntropyBackward: () => {
    const st = states.length > 0 && chance(0.9) ? pick(states) : null;
    const n = st !== null ? st.rows : int(5);
    const args = [maybe(() => (st !== null ? st.state : anyValue())), maybe(() => floats(chance(0.9) ? n : n + 2)), maybe(() => floats(n))];
    if (chance(0.4)) args.push(deviceOutput(st?.logits));
    return args;
  },
  ...cpuEntries(),
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
  if (name === 'linearCrossEntropyWorkspaceBytes') {
    if (typeof r !== 'number' || !Number.isSafeInteger(r) || r < 0) fail(`${name}: returned ${String(r)}`);
    return;
  }
  if (name === 'linearCrossEntropy') {
    for (const id of Object.values(r)) addon.free(id);
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
  if (name === 'exportBuffer') {
    exportedIds.add(args[0]);
    // The newest exports: older ones' buffers have likely been freed since.
    exported.push({ ...r, bytes: addon.byteLength(args[0]) });
    if (exported.length > 16) exported.shift();
    return;
  }
  if (name === 'crossEntropyForward') {
    const rows = addon.byteLength(r.lse) / 4;
    for (const k of ['lse', 'weighted', 'unweighted']) addon.free(r[k]);
    states.push({ state: r.state, rows, logits: isPlainMatrix(args[0]) ? { ...args[0] } : undefined });
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
    // A cpu call copied its host arrays: detaching them now must not reach it.
    if (name.startsWith('cpu') && chance(0.3)) {
      for (const v of hostInputs) if (v.view.buffer.byteLength > 0) structuredClone(v.view.buffer, { transfer: [v.view.buffer] });
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
for (const id of untracked) addon.free(id);
for (const s of states) addon.free(s.state);
const left = addon.stats();
if (left.buffers !== 0 || left.handles !== 0) fail(`leaked: ${JSON.stringify(left)}`);
console.log(JSON.stringify(summary));
process.exit(summary.failures.length === 0 ? 0 : 1);
