// The addon's MPI and NCCL entry points (src/scaleout/), shared by cutloss/mpi, cutloss/nccl and
// backends()' details. Both libraries are loaded by the addon at run time.

import { CutlossError } from './errors.js';
import { native } from './native.js';

export interface LibraryStatus {
  available: boolean;
  reason: string;
  version?: string | number;
}

export interface ScaleOutAddon {
  mpiStatus(): LibraryStatus;
  mpiWorld(): { rank: number; size: number };
  mpiAllReduce(data: Float32Array | Float64Array, op: 'sum' | 'max'): void;
  mpiFinalize(): void;
  ncclStatus(): LibraryStatus;
  ncclUniqueId(): Uint8Array;
  ncclCommInit(id: Uint8Array, rank: number, size: number): number;
  ncclAllReduce(comm: number, data: Float32Array | Float64Array, op: 'sum' | 'max'): void;
  ncclCommDestroy(comm: number): void;
}

/** The addon with its scale-out entry points, or why there is none. */
export function scaleOutAddon(): { addon: ScaleOutAddon | null; error: string } {
  const { addon, error } = native();
  if (addon === null) return { addon: null, error: `the native addon did not load: ${error}` };
  const a = addon as unknown as Partial<ScaleOutAddon>;
  if (typeof a.mpiStatus !== 'function' || typeof a.ncclStatus !== 'function') {
    return { addon: null, error: 'the native addon predates MPI and NCCL support: rebuild it (npm run build:native)' };
  }
  return { addon: a as ScaleOutAddon, error: '' };
}

/** Runs an addon call, turning its errors into CutlossError E_BACKEND. */
export function nativeCall<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof CutlossError) throw e;
    throw new CutlossError('E_BACKEND', e instanceof Error ? e.message : String(e));
  }
}

/** One line each for backends()' details: whether MPI and NCCL can be used here, and why not. */
export function scaleOutDetails(): { mpi: string; nccl: string } {
  const { addon, error } = scaleOutAddon();
  if (addon === null) return { mpi: `unavailable: ${error}`, nccl: `unavailable: ${error}` };
  const line = (s: LibraryStatus): string => (s.available ? `available: ${s.reason}` : `unavailable: ${s.reason}`);
  return { mpi: line(addon.mpiStatus()), nccl: line(addon.ncclStatus()) };
}
