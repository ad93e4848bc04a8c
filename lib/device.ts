// Device tensors: handles to memory on a native backend (a GPU, or the emulator's host
// memory) that stays there between calls. Freed by dispose() / `using`, or at the latest
// by a FinalizationRegistry once the handle is garbage; a disposed handle is E_DISPOSED.
// Memory can be shared: exportHandle() / DeviceTensor.fromHandle() across processes (CUDA
// IPC; POSIX shared memory on cuda-emu) and threads, and DeviceTensor.fromPointer() wraps
// memory other native code owns. Only the owner of memory ever frees it, and an export it
// disposes of stays allocated until every process that imported it has closed its import
// (CUDA forbids freeing memory other processes still have open); new imports are refused.

import { allocate } from './alloc.js';
import { CutlossError, describe } from './errors.js';
import { fromNativeError, native, type NativeAddon, type NativeBackendCode, type NativeMatrix } from './native.js';
import { asOptionsObject, checkKnownKeys } from './options.js';
import { asMatrix, type Dtype, type Tensor } from './tensor.js';

/**
 * The backends that hold device tensors: 'cuda' (GPU memory) and 'cuda-emu' (host memory the
 * emulated kernels use).
 *
 * @example
 * const d = upload(x, { backend: 'cuda-emu' satisfies DeviceBackendName });
 */
export type DeviceBackendName = 'cuda' | 'cuda-emu';

/** Who frees the memory: cutloss ('owned'), its exporter ('imported'), or the caller ('wrapped'). */
export type DeviceOwnership = 'owned' | 'imported' | 'wrapped';

/**
 * A device tensor exported for another process or thread: plain data that survives
 * JSON.stringify and structured cloning (postMessage). The exporter owns the memory.
 */
export interface DeviceTensorHandle {
  type: 'cutloss.DeviceTensor';
  version: 1;
  backend: DeviceBackendName;
  /** 'cuda:0', or 'emu'. */
  device: string;
  shape: Tensor['shape'];
  dtype: Dtype;
  /** Where the tensor starts in the exported memory. */
  byteOffset: number;
  /** Base64: the cudaIpcMemHandle_t bytes (cuda), or the POSIX shared memory name (cuda-emu). */
  handle: string;
  /** The exporting process: its pid and a random tag. */
  process: string;
}

/**
 * Options of DeviceTensor.fromPointer.
 *
 * @example
 * const t = DeviceTensor.fromPointer(address, [N, V], 'f32', { backend: 'cuda' });
 */
export interface FromPointerOptions {
  /** Default 'cuda'. On cuda-emu the address is host memory. */
  backend?: DeviceBackendName;
}

// Node ≥ 20.4 defines Symbol.dispose; on older runtimes use the registered symbol Node uses.
if (typeof (Symbol as { dispose?: symbol }).dispose !== 'symbol') {
  Object.defineProperty(Symbol, 'dispose', { value: Symbol.for('nodejs.dispose') });
}

export const BACKEND_CODE: Record<DeviceBackendName, NativeBackendCode> = { 'cuda-emu': 0, cuda: 1 };
const DEVICE_NAME: Record<DeviceBackendName, string> = { 'cuda-emu': 'emu', cuda: 'cuda:0' };
const DTYPE_BYTES: Record<Dtype, number> = { f32: 4, bf16: 2 };

// Frees what a collected handle still held. Held values are ids; the addon outlives handles.
const finalizer = new FinalizationRegistry<number>((id) => {
  native().addon?.free(id);
});

const constructing = Symbol('DeviceTensor');

/**
 * A handle to a tensor in device memory (a GPU's, or the emulator's host memory), which stays
 * there between calls: ops on DeviceTensors return DeviceTensors. Made by upload(), by ops, by
 * DeviceTensor.fromHandle() (shared by another process or thread) and DeviceTensor.fromPointer();
 * freed by dispose() or `using`, at the latest when garbage-collected. Using a disposed one is
 * E_DISPOSED.
 *
 * @example
 * using logits = upload(tensor(data, [N, V]));
 * const { loss, dLogits } = crossEntropy(logits, labels); // dLogits: DeviceTensor
 * const grad = dLogits!.download();
 */
export class DeviceTensor {
  /** [rows, cols], or [cols] for one row. */
  readonly shape: Tensor['shape'];
  readonly dtype: Dtype;
  /** Where the memory is: 'cuda:0', or 'emu' for the emulator's host memory. */
  readonly device: string;
  readonly backend: DeviceBackendName;
  /** Who frees the memory; dispose() frees it only when 'owned'. */
  readonly ownership: DeviceOwnership;
  // A TypeScript-private field rather than #id: declarations with `#private` do not compile for
  // users whose TypeScript targets ES5 (TypeScript 5's default). Defined non-enumerable in the
  // constructor, so it stays out of Object.keys and JSON like #id did. 0 once disposed.
  private declare bufferId: number;

  /** Handles come from upload(), ops, fromHandle() and fromPointer(); they cannot be made from a number. */
  constructor(
    token: symbol, backend: DeviceBackendName, id: number, shape: Tensor['shape'], dtype: Dtype,
    ownership: DeviceOwnership = 'owned',
  ) {
    if (token !== constructing) throw new CutlossError('E_OPTION', 'DeviceTensor: use upload() to make one');
    this.backend = backend;
    this.device = DEVICE_NAME[backend];
    this.shape = Object.freeze([...shape]) as Tensor['shape'];
    this.dtype = dtype;
    this.ownership = ownership;
    Object.defineProperty(this, 'bufferId', { value: id, writable: true, enumerable: false, configurable: false });
    finalizer.register(this, id, this);
  }

  /**
   * A tensor over memory another native library owns (a device pointer; a host address on
   * cuda-emu). cutloss never frees it: keep it alive, and do not free or resize it, while this
   * handle or any op using it (async ones included) is in flight.
   */
  static fromPointer(address: bigint, shape: Tensor['shape'], dtype: Dtype = 'f32', options?: FromPointerOptions): DeviceTensor {
    const fn = 'DeviceTensor.fromPointer';
    const o = asOptionsObject(options, fn);
    checkKnownKeys(o, ['backend'], fn);
    const backend = backendArg(o.backend ?? 'cuda', `${fn}: options.backend`);
    const dt = dtypeArg(dtype, `${fn}: dtype`);
    const { rows, cols } = shapeArg(shape, dt, `${fn}: shape`);
    if (typeof address !== 'bigint') throw new CutlossError('E_OPTION', `${fn}: address must be a bigint, got ${describe(address)}`);
    if (address === 0n) throw new CutlossError('E_OPTION', `${fn}: address is null (0n)`);
    if (address < 0n || address >= 2n ** 64n) throw new CutlossError('E_OPTION', `${fn}: address must be in [1, 2^64), got ${address}`);
    if (address % BigInt(DTYPE_BYTES[dt]) !== 0n) {
      throw new CutlossError('E_OPTION', `${fn}: address 0x${address.toString(16)} is not aligned to ${DTYPE_BYTES[dt]} bytes (${dt})`);
    }
    const id = call(() => addon().wrapPointer(BACKEND_CODE[backend], address, rows * cols * DTYPE_BYTES[dt], dt === 'bf16' ? 1 : 0));
    return new DeviceTensor(constructing, backend, id, normalShape(shape), dt, 'wrapped');
  }

  /**
   * Opens a handle from exportHandle(), in another process on this machine or another thread.
   * The memory stays the exporter's: disposing the import frees nothing. E_DISPOSED when the
   * exporter has freed it.
   */
  static fromHandle(handle: DeviceTensorHandle): DeviceTensor {
    const fn = 'DeviceTensor.fromHandle';
    if (handle === null || typeof handle !== 'object') {
      throw new CutlossError('E_OPTION', `${fn}: handle must be the object exportHandle() returned, got ${describe(handle)}`);
    }
    const h = handle as unknown as Record<string, unknown>;
    if (h.type !== 'cutloss.DeviceTensor' || h.version !== 1) {
      throw new CutlossError(
        'E_OPTION',
        `${fn}: handle is not a cutloss DeviceTensor handle of version 1 (type ${describe(h.type)}, version ${describe(h.version)})`,
      );
    }
    const backend = backendArg(h.backend, `${fn}: handle.backend`);
    if (h.device !== DEVICE_NAME[backend]) {
      throw new CutlossError(
        'E_BACKEND', `${fn}: handle.device must be '${DEVICE_NAME[backend]}' on ${backend}, got ${describe(h.device)}`,
      );
    }
    const dt = dtypeArg(h.dtype, `${fn}: handle.dtype`);
    const { rows, cols } = shapeArg(h.shape, dt, `${fn}: handle.shape`);
    const offset = h.byteOffset;
    if (typeof offset !== 'number' || !Number.isSafeInteger(offset) || offset < 0 || offset % DTYPE_BYTES[dt] !== 0) {
      throw new CutlossError(
        'E_OPTION', `${fn}: handle.byteOffset must be a non-negative multiple of ${DTYPE_BYTES[dt]}, got ${describe(offset)}`,
      );
    }
    const bytes = typeof h.handle === 'string' ? Buffer.from(h.handle, 'base64') : null;
    if (bytes === null || bytes.length === 0 || bytes.toString('base64') !== h.handle) {
      throw new CutlossError('E_OPTION', `${fn}: handle.handle must be the base64 text exportHandle() wrote`);
    }
    if (typeof h.process !== 'string' || h.process === '') {
      throw new CutlossError('E_OPTION', `${fn}: handle.process must be the exporting process's tag, got ${describe(h.process)}`);
    }
    const exporter = h.process;
    const id = call(() => addon().importBuffer(BACKEND_CODE[backend], bytes, exporter, offset, rows * cols * DTYPE_BYTES[dt]));
    return new DeviceTensor(constructing, backend, id, normalShape(h.shape as Tensor['shape']), dt, 'imported');
  }

  get rows(): number {
    return this.shape.length === 2 ? this.shape[0] : 1;
  }

  get cols(): number {
    return this.shape.length === 2 ? this.shape[1]! : this.shape[0];
  }

  get disposed(): boolean {
    return this.bufferId === 0;
  }

  /** A host copy: Float32Array for f32, bf16 bits in a Uint16Array for bf16. */
  download(): Tensor {
    const id = this.idOf('download: tensor');
    const n = this.rows * this.cols;
    const data = this.dtype === 'bf16' ? allocate(Uint16Array, n, 'the downloaded tensor') : allocate(Float32Array, n, 'the downloaded tensor');
    try {
      addon().download(id, data);
    } catch (e) {
      throw fromNativeError(e);
    }
    return { data, shape: [...this.shape] as Tensor['shape'], dtype: this.dtype };
  }

  /**
   * Where the memory starts, for other native code (a device pointer; a host address on
   * cuda-emu). Valid while this tensor is alive; 0n for an empty tensor.
   */
  get address(): bigint {
    const id = this.idOf('address: tensor');
    return call(() => addon().address(id));
  }

  /**
   * Overwrites the tensor in place with host data of its shape and dtype (a Tensor, or a bare
   * Float32Array / bf16 Uint16Array). Do not write while an async op reads this tensor.
   */
  write(data: Tensor | Float32Array | Uint16Array): void {
    const name = 'write: data';
    const id = this.idOf('write: tensor');
    const t = data instanceof Float32Array || data instanceof Uint16Array ? { data, shape: this.shape, dtype: this.dtype } : data;
    const m = asMatrix(t, name);
    if (m.dtype !== this.dtype) throw new CutlossError('E_DTYPE', `${name} is ${m.dtype}, the tensor is ${this.dtype}`);
    if (m.rows !== this.rows || m.cols !== this.cols) {
      throw new CutlossError('E_SHAPE', `${name} has shape [${m.rows}, ${m.cols}], the tensor has [${this.rows}, ${this.cols}]`);
    }
    // The addon refuses SharedArrayBuffer views (another thread could write them meanwhile).
    const bytes = m.data.buffer instanceof SharedArrayBuffer ? m.data.slice() : m.data;
    call(() => addon().write(id, bytes));
  }

  /**
   * A handle another process on this machine (or a worker thread) opens with
   * DeviceTensor.fromHandle(). This tensor keeps owning the memory; once it is disposed, new
   * imports fail with E_DISPOSED, and the memory is freed when the last process that imported
   * it disposes of its import (or ends; one that crashed keeps it until this process ends). Only memory
   * cutloss allocated can be exported (not imports or wrapped pointers).
   */
  exportHandle(): DeviceTensorHandle {
    const id = this.idOf('exportHandle: tensor');
    const r = call(() => addon().exportBuffer(id));
    return {
      type: 'cutloss.DeviceTensor', version: 1, backend: this.backend, device: this.device,
      shape: [...this.shape] as Tensor['shape'], dtype: this.dtype, byteOffset: 0,
      handle: Buffer.from(r.handle.buffer, r.handle.byteOffset, r.handle.byteLength).toString('base64'), process: r.process,
    };
  }

  /**
   * Frees the device memory now (only releases the handle when the memory is not 'owned'): back to
   * the backend's caching allocator for the next call, or, for an exported tensor still open in
   * other processes, once they all closed it. Idempotent; later use is E_DISPOSED.
   */
  dispose(): void {
    if (this.bufferId === 0) return;
    finalizer.unregister(this);
    native().addon?.free(this.bufferId);
    this.bufferId = 0;
  }

  toString(): string {
    const ownership = this.ownership === 'owned' ? '' : `, ${this.ownership}`;
    return `DeviceTensor(${this.device}, [${this.shape.join(', ')}], ${this.dtype}${ownership}${this.disposed ? ', disposed' : ''})`;
  }

  /** @internal The buffer id, or E_DISPOSED naming the argument. */
  idOf(name: string): number {
    if (this.bufferId === 0) throw new CutlossError('E_DISPOSED', `${name} was disposed`);
    return this.bufferId;
  }
}

// `using t = upload(x)` frees t at the end of the block. The method is attached here rather
// than declared in the class so the published declarations never name Symbol.dispose, which a
// program compiled without esnext.disposable (TypeScript's default lib) does not have; the
// interface below declares it exactly where the program's lib does.
Object.defineProperty(DeviceTensor.prototype, Symbol.dispose, {
  value: function dispose(this: DeviceTensor): void {
    this.dispose();
  },
  writable: true,
  configurable: true,
});

/**
 * `[Symbol.dispose](): void` where the compiling program declares `Symbol.dispose` (lib
 * esnext.disposable, or @types/node), so `using` type-checks there; nothing elsewhere.
 */
type DisposableWhereDeclared = typeof globalThis extends { Symbol: { readonly dispose: infer S extends symbol } }
  ? { [K in S]: () => void }
  : {};

// Declaration merging: the class's instances also have DisposableWhereDeclared's member.
export interface DeviceTensor extends DisposableWhereDeclared {}

function addon(): NativeAddon {
  const { addon: a, error } = native();
  if (a === null) throw new CutlossError('E_BACKEND', `the native addon is unavailable: ${error}`);
  return a;
}

function call<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw fromNativeError(e);
  }
}

function backendArg(v: unknown, name: string): DeviceBackendName {
  if (v !== 'cuda' && v !== 'cuda-emu') throw new CutlossError('E_BACKEND', `${name} must be 'cuda' or 'cuda-emu', got ${describe(v)}`);
  return v;
}

function dtypeArg(v: unknown, name: string): Dtype {
  if (v !== 'f32' && v !== 'bf16') throw new CutlossError('E_DTYPE', `${name} must be 'f32' or 'bf16', got ${describe(v)}`);
  return v;
}

/** [rows, cols] or [cols] of safe integers, cols ≥ 1, whose bytes stay below 2^53. */
function shapeArg(shape: unknown, dtype: Dtype, name: string): { rows: number; cols: number } {
  const ok = (n: unknown) => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
  if (!Array.isArray(shape) || (shape.length !== 1 && shape.length !== 2) || !shape.every(ok)) {
    throw new CutlossError('E_SHAPE', `${name} must be [rows, cols] or [cols] of non-negative integers, got ${JSON.stringify(shape)}`);
  }
  const rows: number = shape.length === 2 ? shape[0] : 1;
  const cols: number = shape.length === 2 ? shape[1] : shape[0];
  if (cols < 1) throw new CutlossError('E_SHAPE', `${name}: the last dimension must be at least 1, got ${cols}`);
  if (rows * cols * DTYPE_BYTES[dtype] > Number.MAX_SAFE_INTEGER) {
    throw new CutlossError('E_SHAPE', `${name}: [${shape.join(', ')}] of ${dtype} exceeds 2^53 bytes`);
  }
  return { rows, cols };
}

function normalShape(shape: Tensor['shape']): Tensor['shape'] {
  return (shape.length === 2 ? [shape[0], shape[1]] : [shape[0]]) as Tensor['shape'];
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
