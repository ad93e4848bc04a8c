// Typed-array allocation that fails as E_OOM naming the bytes asked for. V8 reports a failed
// allocation as a bare RangeError ("Array buffer allocation failed", or "Invalid typed array
// length" past its size limit) that says neither what nor how much; every array whose size
// grows with the input goes through here so the user gets the same error on every backend.

import { CutlossError } from './errors.js';
import { roundIntoBf16 } from './tensor.js';

interface TypedArrayKind<A> {
  new (length: number): A;
  readonly BYTES_PER_ELEMENT: number;
  readonly name: string;
}

/** The E_OOM error for an allocation of `bytes` that failed (`what` names the buffer). */
export function outOfMemory(bytes: number, what: string, cause?: unknown): CutlossError {
  const why = cause instanceof Error ? ` (${cause.message})` : '';
  return new CutlossError('E_OOM', `cannot allocate ${bytes} bytes for ${what}${why}`);
}

/** A zero-filled typed array of `length` elements, or E_OOM with its size in bytes. */
export function allocate<A>(Kind: TypedArrayKind<A>, length: number, what: string): A {
  try {
    return new Kind(length);
  } catch (e) {
    // lengths are validated integers by now, so a RangeError here means the memory was refused
    if (e instanceof RangeError) throw outOfMemory(length * Kind.BYTES_PER_ELEMENT, `${what} (${Kind.name}[${length}])`, e);
    throw e;
  }
}

/** A new Float32Array holding `values` rounded to f32 (e.g. float64 accumulators), or E_OOM. */
export function f32Copy(values: ArrayLike<number>, what: string): Float32Array {
  const out = allocate(Float32Array, values.length, what);
  out.set(values);
  return out;
}

/**
 * Writes f32 gradient values into a caller-provided output, rounding to bf16 for a bf16 one.
 * E_DISPOSED when its array was detached meanwhile (an async call), and nothing is written.
 */
export function writeGradient(dest: { data: Float32Array | Uint16Array }, values: Float32Array, name = 'options.out'): void {
  const d = dest.data;
  if (d.length !== values.length) {
    throw new CutlossError('E_DISPOSED', `${name}: its array was detached or resized before the result could be written into it`);
  }
  if (d instanceof Float32Array) {
    d.set(values);
    return;
  }
  roundIntoBf16(values, d);
}
