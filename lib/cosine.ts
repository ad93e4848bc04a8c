// Margin softmax for recognition (CosFace, Wang et al. 2018; ArcFace, Deng et al. 2019):
// `linearCrossEntropy(E, W, labels, { logits: { kind: 'cosine', scale, margin, angularMargin } })`.
// Composed from three steps, none of them N×V:
//   1. E and W to unit rows as PyTorch's F.normalize (x / max(‖x‖, 1e-12)), the scale s folded
//      into E's copy, so the raw logits E'·W'ᵀ are s·cos θ_ij: O((N + V)·D);
//   2. the ordinary fused loss on those copies, whose engines map the label's logit
//      s·c → s·φ(c) (lib/js/math.ts, cuda/math/margin.cuh) and scale its gradient by φ'(c);
//   3. the gradients back through the normalizations: for y = x/‖x‖, dx = (dy − y(y·dy))/‖x‖
//      (dy/1e-12 on F.normalize's eps branch, ‖x‖ < 1e-12).
// The copies have the inputs' dtype (bf16 when both are): the engines keep their bf16 kernels
// (tensor cores on a GPU) and memory, at bf16's accuracy (unit rows rounded to 2^-9 relative,
// the inner gradients rounded before step 3 and the results once more). Device tensors stay on
// the device: steps 1 and 3 are the kernels of cuda/normalize.cu (one block per row). Host
// tensors take src/cpu/unit_rows.cc whenever the native addon is loaded (host math, whatever
// backend runs step 2) except on the js backend, which stays pure TypeScript (unitRows and
// backThroughUnitRows below, also the fallback without the addon). All three state the
// formulas of cuda/math/unit_rows.cuh.
// classSample composes (it samples W first, then calls back here); so does vocabParallel (each
// rank normalizes its own W rows, E is whole on every rank; lib/scaleOut.ts maps only the label
// columns a rank owns).

import { currentBackend } from './backend.js';
import { cpuAddon } from './cpuBackend.js';
import { DeviceTensor, adopt, nativeMatrix } from './device.js';
import { CutlossError, describe } from './errors.js';
import { fromNativeError, native, unshared, type NativeMatrix } from './native.js';
import { asOptionsObject, resolveLogits } from './options.js';
import { allocate, writeGradient } from './alloc.js';
import { asMatrix, fromF32, resultLike, toF32, type Matrix, type Tensor } from './tensor.js';

type AnyTensor = Tensor | DeviceTensor;

/** F.normalize's eps. */
export const NORMALIZE_EPS = 1e-12;

/** Marks the inner call's options: its inputs are already the scaled unit rows. */
const UNIT_ROWS = Symbol('cutloss.cosineUnitRows');

/** Whether these options ask for cosine logits (and are not the inner call's). */
export function wantsCosine(options: unknown): boolean {
  if (options === null || typeof options !== 'object') return false;
  if ((options as Record<symbol, unknown>)[UNIT_ROWS] === true) return false;
  const l = (options as Record<string, unknown>).logits;
  return l !== null && typeof l === 'object' && (l as Record<string, unknown>).kind === 'cosine';
}

/** Rows of m scaled to norm `scale` (F.normalize times scale), in f32, and each row's norm ‖x‖. */
export function unitRows(m: Matrix, scale: number): { rows: Float32Array; norms: Float64Array } {
  const x = toF32(m);
  const D = m.cols;
  const rows = allocate(Float32Array, m.rows * D, 'the normalized rows');
  const norms = allocate(Float64Array, m.rows, 'the row norms');
  for (let i = 0, o = 0; i < m.rows; i++, o += D) {
    const end = o + D;
    let ss = 0;
    for (let k = o; k < end; k++) {
      const v = x[k]!;
      ss += v * v;
    }
    const norm = Math.sqrt(ss);
    norms[i] = norm;
    const f = scale / Math.max(norm, NORMALIZE_EPS);
    for (let k = o; k < end; k++) rows[k] = x[k]! * f;
  }
  return { rows, norms };
}

/**
 * dL/dx from g = dL/dy' where y' = scale·x/max(‖x‖, eps) (the unit rows times scale):
 * dy = scale·g; dx = (dy − ŷ(ŷ·dy))/‖x‖ when ‖x‖ ≥ eps, else dy/eps. float64 sums.
 */
export function backThroughUnitRows(m: Matrix, norms: Float64Array, scale: number, g: Float32Array): Float32Array {
  const x = toF32(m);
  const D = m.cols;
  const out = allocate(Float32Array, m.rows * D, 'the gradient');
  for (let i = 0; i < m.rows; i++) {
    const d = norms[i]!;
    const o = i * D;
    if (d < NORMALIZE_EPS) { // y = x/eps: no projection (PyTorch's clamp_min passes the gradient at equality)
      for (let k = 0; k < D; k++) out[o + k] = (scale * g[o + k]!) / NORMALIZE_EPS;
      continue;
    }
    const end = o + D;
    let xg = 0;
    for (let k = o; k < end; k++) xg += x[k]! * g[k]!;
    const dot = xg / d; // ŷ·g
    const inv = 1 / d;
    const sd = scale * inv;
    for (let k = o; k < end; k++) out[k] = sd * (g[k]! - x[k]! * inv * dot);
  }
  return out;
}

type HostData = Float32Array | Uint16Array;

interface CpuUnitRowsAddon {
  cpuUnitRows(x: HostData, rows: number, cols: number, dtype: 0 | 1, scale: number): { rows: Float32Array; norms: Float64Array };
  cpuUnitRowsBackward(
    x: HostData, rows: number, cols: number, dtype: 0 | 1, norms: Float64Array, scale: number, g: HostData, gDtype: 0 | 1,
    dxOut?: Float32Array | null,
  ): Float32Array | Record<string, never>;
}

/** src/cpu/unit_rows.cc, or null: no addon, a build without it, or the js backend (pure TypeScript). */
function cpuUnitRowsAddon(): CpuUnitRowsAddon | null {
  const a = cpuAddon(native().addon) as unknown as Partial<CpuUnitRowsAddon> | null;
  if (a === null || typeof a.cpuUnitRows !== 'function' || typeof a.cpuUnitRowsBackward !== 'function') return null;
  return currentBackend().name === 'js' ? null : (a as CpuUnitRowsAddon);
}

const dtypeCode = (m: Matrix): 0 | 1 => (m.dtype === 'bf16' ? 1 : 0);

/** unitRows in native code (threads, SIMD), or null where cpuUnitRowsAddon is. */
export function nativeUnitRows(m: Matrix, scale: number): { rows: Float32Array; norms: Float64Array } | null {
  const a = cpuUnitRowsAddon();
  if (a === null) return null;
  try {
    return a.cpuUnitRows(unshared(m.data), m.rows, m.cols, dtypeCode(m), scale);
  } catch (e) {
    throw fromNativeError(e);
  }
}

/**
 * backThroughUnitRows in native code, g of m's shape in either dtype; null where cpuUnitRowsAddon
 * is. `inPlace` (g f32): dx overwrites g's array, which spares a fresh array's page faults.
 */
export function nativeBackThroughUnitRows(m: Matrix, norms: Float64Array, scale: number, g: Matrix, inPlace = false): Float32Array | null {
  const a = cpuUnitRowsAddon();
  if (a === null) return null;
  const gData = unshared(g.data);
  const into = inPlace && gData instanceof Float32Array ? gData : null;
  try {
    const dx = a.cpuUnitRowsBackward(unshared(m.data), m.rows, m.cols, dtypeCode(m), norms, scale, gData, dtypeCode(g), into);
    return into ?? (dx as Float32Array);
  } catch (e) {
    throw fromNativeError(e);
  }
}

interface NativeUnitRowsAddon {
  unitRows(x: NativeMatrix, scale: number, dtype: 0 | 1): { y: number; norms: number };
  unitRowsBackward(x: NativeMatrix, norms: NativeMatrix, scale: number, g: NativeMatrix): { dx: number };
}

/** The kernels of cuda/normalize.cu, or null in a build without them. */
function unitRowsAddon(): NativeUnitRowsAddon | null {
  const a = native().addon as unknown as Partial<NativeUnitRowsAddon> | null;
  return a !== null && typeof a.unitRows === 'function' && typeof a.unitRowsBackward === 'function' ? (a as NativeUnitRowsAddon) : null;
}

/** x's rows to norm `scale` on the device, in `dtype`, with their norms [rows, 1] (f32). */
function deviceUnitRows(a: NativeUnitRowsAddon, x: DeviceTensor, scale: number, dtype: 'f32' | 'bf16'): { rows: DeviceTensor; norms: DeviceTensor } {
  let ids: { y: number; norms: number };
  try {
    ids = a.unitRows(nativeMatrix(x, 'linearCrossEntropy: unit rows'), scale, dtype === 'bf16' ? 1 : 0);
  } catch (e) {
    throw fromNativeError(e);
  }
  return { rows: adopt(x.backend, ids.y, [x.rows, x.cols], dtype), norms: adopt(x.backend, ids.norms, [x.rows, 1], 'f32') };
}

/** dL/dx on the device from g = dL/dy of deviceUnitRows; g is disposed. */
function deviceBackThroughUnitRows(a: NativeUnitRowsAddon, x: DeviceTensor, norms: DeviceTensor, scale: number, g: DeviceTensor): DeviceTensor {
  try {
    const { dx } = a.unitRowsBackward(nativeMatrix(x, 'x'), nativeMatrix(norms, 'norms'), scale, nativeMatrix(g, 'gradient'));
    return adopt(x.backend, dx, [x.rows, x.cols], x.dtype);
  } catch (e) {
    throw fromNativeError(e);
  } finally {
    g.dispose();
  }
}

/** Device inputs with the kernels: normalize, run, back-project, all on the device. */
function onDevice<T>(
  a: NativeUnitRowsAddon, E: DeviceTensor, W: DeviceTensor, scale: number, labels: unknown, inner: object,
  run: (E: AnyTensor, W: AnyTensor, labels: unknown, options: object) => T,
): T {
  const dtype = E.dtype === 'bf16' && W.dtype === 'bf16' ? 'bf16' : 'f32';
  const made: DeviceTensor[] = [];
  const release = () => {
    for (const t of made) t.dispose();
  };
  let result: T;
  let e: { rows: DeviceTensor; norms: DeviceTensor };
  let w: { rows: DeviceTensor; norms: DeviceTensor };
  try {
    e = deviceUnitRows(a, E, scale, dtype);
    made.push(e.rows, e.norms);
    w = deviceUnitRows(a, W, 1, dtype);
    made.push(w.rows, w.norms);
    result = run(e.rows, w.rows, labels, inner);
  } catch (err) {
    release();
    throw err;
  }
  const finish = (r: T): T => {
    const res = r as Gradients;
    if (res.dEmbeddings !== undefined) res.dEmbeddings = deviceBackThroughUnitRows(a, E, e.norms, scale, res.dEmbeddings as DeviceTensor);
    if (res.dClassifier !== undefined) res.dClassifier = deviceBackThroughUnitRows(a, W, w.norms, 1, res.dClassifier as DeviceTensor);
    return r;
  };
  if (result instanceof Promise) return result.then((r: T) => finish(r)).finally(release) as T;
  try {
    return finish(result);
  } finally {
    release();
  }
}

interface Gradients {
  dEmbeddings?: AnyTensor;
  dClassifier?: AnyTensor;
}

/**
 * linearCrossEntropy with cosine logits: normalizes E and W, calls `run` (linearCrossEntropy or
 * its async twin) on the copies with options it will not send back here, and returns its
 * result with the gradients taken back through the normalizations.
 */
export function cosineLinearCrossEntropy<T>(
  embeddings: AnyTensor, classifier: AnyTensor, labels: unknown, options: object,
  run: (E: AnyTensor, W: AnyTensor, labels: unknown, options: object) => T,
): T {
  const fn = 'linearCrossEntropy';
  const o = asOptionsObject(options, fn) as Record<string, unknown>;
  const logits = resolveLogits(o.logits, o.bias !== undefined, fn);
  const device = embeddings instanceof DeviceTensor;
  if (device !== classifier instanceof DeviceTensor) {
    throw new CutlossError('E_BACKEND', `${fn}: embeddings and classifier must both be DeviceTensors or both host tensors, got ${describe(embeddings)} and ${describe(classifier)}`);
  }
  const out = (o.out ?? null) as Record<string, unknown> | null;
  if (device && out !== null) {
    throw new CutlossError('E_OPTION', `${fn}: options.out with logits kind 'cosine' takes host tensors only`);
  }
  const inner: Record<string | symbol, unknown> = { ...o, [UNIT_ROWS]: true };
  delete inner.out;
  if (device) {
    const kernels = unitRowsAddon();
    if (kernels === null) throw new CutlossError('E_BACKEND', `${fn}: this build of the addon lacks the unit-row kernels (cuda/normalize.cu); rebuild it`);
    return onDevice(kernels, embeddings as DeviceTensor, classifier as DeviceTensor, logits.scale, labels, inner, run);
  }
  const E = asMatrix(embeddings, `${fn}: embeddings`);
  const W = asMatrix(classifier, `${fn}: classifier`);
  const s = logits.scale;
  const e = nativeUnitRows(E, s) ?? unitRows(E, s);
  const w = nativeUnitRows(W, 1) ?? unitRows(W, 1);
  const dtype = E.dtype === 'bf16' && W.dtype === 'bf16' ? 'bf16' : 'f32';
  const eUnit: Tensor = { data: fromF32(e.rows, dtype), shape: [E.rows, E.cols], dtype };
  const wUnit: Tensor = { data: fromF32(w.rows, dtype), shape: [W.rows, W.cols], dtype };
  /** Inner gradient (of the unit rows) → the input's gradient, in its dtype (into `dest` when given). */
  const back = (g: AnyTensor, m: Matrix, norms: Float64Array, scale: number, dest: unknown): AnyTensor => {
    const gm = asMatrix(g, 'gradient');
    // g is the inner call's own gradient (no options.out reaches it): dx may take its place
    const dx = nativeBackThroughUnitRows(m, norms, scale, gm, true) ?? backThroughUnitRows(m, norms, scale, toF32(gm));
    if (dest !== undefined && dest !== null) {
      writeGradient(dest as Tensor, dx);
      return dest as Tensor;
    }
    return resultLike(m, dx);
  };
  const finish = (r: T): T => {
    const res = r as Gradients;
    if (res.dEmbeddings !== undefined) res.dEmbeddings = back(res.dEmbeddings, E, e.norms, s, out?.dEmbeddings);
    if (res.dClassifier !== undefined) res.dClassifier = back(res.dClassifier, W, w.norms, 1, out?.dClassifier);
    return r;
  };
  const result = run(eUnit, wUnit, labels, inner);
  return (result instanceof Promise ? result.then((r: T) => finish(r)) : finish(result)) as T;
}
