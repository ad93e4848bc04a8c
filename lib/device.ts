// Device tensors: handles to memory on a native backend (a GPU, or the emulator's host
// memory) that stays there between calls. Freed by dispose() / `using`, or at the latest
// by a FinalizationRegistry once the handle is garbage; a disposed handle is E_DISPOSED.

import { CutlossError, describe } from './errors.js';
import { fromNativeError, native, type NativeAddon, type NativeBackendCode, type NativeMatrix } from './native.js';
import type { Dtype, Tensor } from './tensor.js';

export type DeviceBackendName = 'cuda' | 'cuda-emu';

// Node ≥ 20.4 defines Symbol.dispose; on older runtimes use the registered symbol Node uses.
if (typeof (Symbol as { dispose?: symbol }).dispose !== 'symbol') {
  Object.defineProperty(Symbol, 'dispose', { value: Symbol.for('nodejs.dispose') });
}

export const BACKEND_CODE: Record<DeviceBackendName, NativeBackendCode> = { 'cuda-emu': 0, cuda: 1 };
const DEVICE_NAME: Record<DeviceBackendName, string> = { 'cuda-emu': 'emu', cuda: 'cuda:0' };

// Frees what a collected handle still held. Held values are ids; the addon outlives handles.
const finalizer = new FinalizationRegistry<number>((id) => {
  native().addon?.free(id);
});

const constructing = Symbol('DeviceTensor');

export class DeviceTensor {
  /** [rows, cols], or [cols] for one row. */
  readonly shape: Tensor['shape'];
  readonly dtype: Dtype;
  /** Where the memory is: 'cuda:0', or 'emu' for the emulator's host memory. */
  readonly device: string;
  readonly backend: DeviceBackendName;
  #id: number;

  /** Handles come from upload() and from ops; they cannot be made from a number. */
  constructor(token: symbol, backend: DeviceBackendName, id: number, shape: Tensor['shape'], dtype: Dtype) {
    if (token !== constructing) throw new CutlossError('E_OPTION', 'DeviceTensor: use upload() to make one');
    this.backend = backend;
    this.device = DEVICE_NAME[backend];
    this.shape = Object.freeze([...shape]) as Tensor['shape'];
    this.dtype = dtype;
    this.#id = id;
    finalizer.register(this, id, this);
  }

  get rows(): number {
    return this.shape.length === 2 ? this.shape[0] : 1;
  }

  get cols(): number {
    return this.shape.length === 2 ? this.shape[1]! : this.shape[0];
  }

  get disposed(): boolean {
    return this.#id === 0;
  }

  /** A host copy: Float32Array for f32, bf16 bits in a Uint16Array for bf16. */
  download(): Tensor {
    const id = this.idOf('download: tensor');
    const n = this.rows * this.cols;
    const data = this.dtype === 'bf16' ? new Uint16Array(n) : new Float32Array(n);
    try {
      addon().download(id, data);
    } catch (e) {
      throw fromNativeError(e);
    }
    return { data, shape: [...this.shape] as Tensor['shape'], dtype: this.dtype };
  }

  /** Frees the device memory now. Idempotent; later use is E_DISPOSED. */
  dispose(): void {
    if (this.#id === 0) return;
    finalizer.unregister(this);
    native().addon?.free(this.#id);
    this.#id = 0;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  toString(): string {
    return `DeviceTensor(${this.device}, [${this.shape.join(', ')}], ${this.dtype}${this.disposed ? ', disposed' : ''})`;
  }

  /** @internal The buffer id, or E_DISPOSED naming the argument. */
  idOf(name: string): number {
    if (this.#id === 0) throw new CutlossError('E_DISPOSED', `${name} was disposed`);
    return this.#id;
  }
}

function addon(): NativeAddon {
  const { addon: a, error } = native();
  if (a === null) throw new CutlossError('E_BACKEND', `the native addon is unavailable: ${error}`);
  return a;
}

/** @internal Wraps a buffer id that an op or upload returned. */
export function adopt(backend: DeviceBackendName, id: number, shape: Tensor['shape'], dtype: Dtype): DeviceTensor {
  return new DeviceTensor(constructing, backend, id, shape, dtype);
}

/** @internal Checks a DeviceTensor argument: a live handle, on `backend` when given. */
export function deviceArg(t: unknown, name: string, backend?: DeviceBackendName): DeviceTensor {
  if (!(t instanceof DeviceTensor)) {
    throw new CutlossError('E_BACKEND', `${name} must be a DeviceTensor like the other inputs, got ${describe(t)}`);
  }
  t.idOf(name);
  if (backend !== undefined && t.backend !== backend) {
    throw new CutlossError('E_BACKEND', `${name} is on ${t.backend}, the other inputs are on ${backend}`);
  }
  return t;
}

/** @internal The addon's view of a live tensor. */
export function nativeMatrix(t: DeviceTensor, name: string): NativeMatrix {
  return { id: t.idOf(name), dtype: t.dtype === 'bf16' ? 1 : 0, rows: t.rows, cols: t.cols };
}
