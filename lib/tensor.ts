import { allocate } from './alloc.js';
import { CutlossError, describe } from './errors.js';

/**
 * Element type: 'f32' (a Float32Array), or 'bf16' (bfloat16 as raw bits in a Uint16Array).
 *
 * @example
 * const x: Tensor = { data: bits, shape: [N, V], dtype: 'bf16' satisfies Dtype };
 */
export type Dtype = 'f32' | 'bf16';

/**
 * Host data with an explicit shape, row-major: `shape` [rows, cols], or [cols] for one row;
 * `data` has rows·cols elements (f32, or bf16 bits in a Uint16Array with `dtype: 'bf16'`).
 *
 * @example
 * const x: Tensor = { data: new Float32Array(N * V), shape: [N, V] };
 */
export interface Tensor {
  data: Float32Array | Uint16Array;
  shape: [rows: number, cols: number] | [cols: number];
  dtype?: Dtype;
}

/** A validated view of a tensor as a rows × cols matrix. */
export interface Matrix {
  data: Float32Array | Uint16Array;
  rows: number;
  cols: number;
  dtype: Dtype;
  shape: Tensor['shape'];
}

function isCount(n: unknown): n is number {
  return typeof n === 'number' && Number.isInteger(n) && n >= 0 && n <= Number.MAX_SAFE_INTEGER;
}

export function dtypeOf(data: unknown, dtype: unknown, name: string): Dtype {
  if (dtype !== undefined && dtype !== 'f32' && dtype !== 'bf16') {
    throw new CutlossError('E_DTYPE', `${name}.dtype must be 'f32' or 'bf16', got ${describe(dtype)}`);
  }
  if (data instanceof Float32Array) {
    if (dtype === 'bf16') {
      throw new CutlossError('E_DTYPE', `${name}: dtype 'bf16' needs raw bits in a Uint16Array, got Float32Array`);
    }
    return 'f32';
  }
  if (data instanceof Uint16Array) {
    if (dtype === 'f32') {
      throw new CutlossError('E_DTYPE', `${name}: dtype 'f32' needs a Float32Array, got Uint16Array`);
    }
    return 'bf16';
  }
  throw new CutlossError(
    'E_DTYPE',
    `${name}.data must be a Float32Array (f32) or a Uint16Array (bf16 bits), got ${describe(data)}`,
  );
}

/** Validates a Tensor argument and returns its matrix view. `minCols` guards V = 0. */
export function asMatrix(t: unknown, name: string): Matrix {
  if (t === null || typeof t !== 'object') {
    throw new CutlossError('E_SHAPE', `${name} must be a tensor { data, shape, dtype? }, got ${describe(t)}`);
  }
  const { data, shape, dtype } = t as Tensor;
  const dt = dtypeOf(data, dtype, name);
  if (!Array.isArray(shape) || (shape.length !== 1 && shape.length !== 2) || !shape.every(isCount)) {
    throw new CutlossError(
      'E_SHAPE',
      `${name}.shape must be [rows, cols] or [cols] of non-negative integers, got ${JSON.stringify(shape)}`,
    );
  }
  const rows = shape.length === 2 ? shape[0] : 1;
  const cols = shape.length === 2 ? shape[1]! : shape[0];
  if (cols < 1) throw new CutlossError('E_SHAPE', `${name}: the last dimension must be at least 1, got ${cols}`);
  if (rows * cols !== data.length) {
    throw new CutlossError(
      'E_SHAPE',
      `${name}: shape [${shape.join(', ')}] needs ${rows * cols} elements, data has ${data.length}`,
    );
  }
  return { data, rows, cols, dtype: dt, shape: (shape.length === 2 ? [rows, cols] : [cols]) as Tensor['shape'] };
}

/**
 * A Tensor from data and shape, validated at once (E_SHAPE, E_DTYPE) rather than at the first op.
 *
 * @param data Float32Array (f32) or Uint16Array (bf16 bits) of rows·cols elements.
 * @param shape [rows, cols], or [cols] for one row.
 * @param dtype 'f32' or 'bf16'; default from the data's type.
 * @example
 * const x = tensor(new Float32Array([1, 2, 3, 4, 5, 6]), [2, 3]);
 */
export function tensor(data: Float32Array | Uint16Array, shape: Tensor['shape'], dtype?: Dtype): Tensor {
  const m = asMatrix({ data, shape, dtype }, 'tensor');
  return { data, shape: m.shape, dtype: m.dtype };
}

// bf16 is the top half of an f32: widening is a shift; narrowing rounds to nearest even.
const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/**
 * The float a bfloat16 bit pattern holds: `bits << 16` read as an f32 (exact).
 *
 * @example
 * bf16ToF32(0x3f80); // 1
 */
export function bf16ToF32(bits: number): number {
  u32Scratch[0] = bits << 16;
  return f32Scratch[0]!;
}

/**
 * The bfloat16 bits nearest to x (f32 rounded to 8 mantissa bits, ties to even; NaN stays NaN).
 *
 * @example
 * const bits = Uint16Array.from(values, f32ToBf16); // data for a bf16 Tensor
 */
export function f32ToBf16(x: number): number {
  f32Scratch[0] = x;
  return bitsToBf16(u32Scratch[0]!);
}

/** The bf16 bits nearest to the f32 with bits u. */
function bitsToBf16(u: number): number {
  if ((u & 0x7f800000) === 0x7f800000 && (u & 0x007fffff) !== 0) return (u >>> 16) | 0x0040; // keep NaN a NaN
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/**
 * out[i] = f32ToBf16(values[i]), reading the floats' bits in place: gradients of millions of
 * entries. The bits are read as int32 (small integers to V8, where uint32 above 2^31 are
 * doubles); bitsToBf16's >>> 16 wraps them back.
 */
export function roundIntoBf16(values: Float32Array, out: Uint16Array): void {
  const bits = new Int32Array(values.buffer, values.byteOffset, values.length);
  for (let i = 0; i < bits.length; i++) out[i] = bitsToBf16(bits[i]!);
}

/** The matrix's values as f32 (a view when already f32, a widened copy for bf16). */
export function toF32(m: Matrix): Float32Array {
  if (m.dtype === 'f32') return m.data as Float32Array;
  const src = m.data as Uint16Array;
  const out = allocate(Float32Array, src.length, 'the f32 copy of a bf16 input');
  const outBits = new Uint32Array(out.buffer);
  for (let i = 0; i < src.length; i++) outBits[i] = src[i]! << 16;
  return out;
}

/**
 * Rounds large results natively where the cpu addon loaded (cpuBackend.ts): all threads, pooled
 * memory; `consumed` values (a backend's f32 result that nothing else holds) may go back to the
 * addon's pool at once, so that a loop that never yields reuses them.
 */
let nativeBf16Rounding: ((values: Float32Array, consumed: boolean) => Uint16Array) | null = null;
/** Results of at least this many elements go to nativeBf16Rounding: below, one JS loop is as quick. */
const NATIVE_ROUNDING_MIN = 1 << 16;

export function useNativeBf16Rounding(round: (values: Float32Array, consumed: boolean) => Uint16Array): void {
  nativeBf16Rounding = round;
}

/** values as `dtype`; `consumed`: values is a backend's fresh result that nothing reads after this. */
export function fromF32(values: Float32Array, dtype: Dtype, consumed = false): Float32Array | Uint16Array {
  if (dtype === 'f32') return values;
  if (nativeBf16Rounding !== null && values.length >= NATIVE_ROUNDING_MIN) return nativeBf16Rounding(values, consumed);
  const out = allocate(Uint16Array, values.length, 'the bf16 result');
  roundIntoBf16(values, out);
  return out;
}

/** Wraps f32 results in a tensor of the input's dtype and shape (consumed: see fromF32). */
export function resultLike(m: Matrix, values: Float32Array, consumed = false): Tensor {
  return { data: fromF32(values, m.dtype, consumed), shape: [...m.shape] as Tensor['shape'], dtype: m.dtype };
}
