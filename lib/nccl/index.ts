// cutloss/nccl: a Communicator over NCCL, for processes that each drive one GPU. The addon loads
// libnccl at run time; where it (or a CUDA device) is absent, every call says why. Arrays are
// staged through device memory, so the same losses run on it as on cutloss/mpi.

import type { Communicator } from '../communicator.js';
import { CutlossError } from '../errors.js';
import { nativeCall, scaleOutAddon, type LibraryStatus, type ScaleOutAddon } from '../scaleOutNative.js';

export type { Communicator } from '../communicator.js';

/** A Communicator over an NCCL communicator; destroy() releases it. */
export interface NcclCommunicator extends Communicator {
  destroy(): void;
}

function ready(fn: string): ScaleOutAddon {
  const { addon, error } = scaleOutAddon();
  if (addon === null) throw new CutlossError('E_BACKEND', `${fn}: ${error}`);
  const s = addon.ncclStatus();
  if (!s.available) throw new CutlossError('E_BACKEND', `${fn}: NCCL is unavailable: ${s.reason}`);
  return addon;
}

/**
 * Whether NCCL can be used here (libnccl found, a CUDA device present), and why not.
 *
 * @example
 * console.log(ncclStatus().reason);
 */
export function ncclStatus(): LibraryStatus {
  const { addon, error } = scaleOutAddon();
  if (addon === null) return { available: false, reason: error };
  return addon.ncclStatus();
}

/**
 * A new NCCL unique id (128 bytes): rank 0 makes it and sends it to the others by any means
 * (cutloss/mpi, a file, an environment variable via {@link ncclIdToString}).
 *
 * @example
 * const id = rank === 0 ? ncclUniqueId() : received;
 */
export function ncclUniqueId(): Uint8Array {
  const addon = ready('ncclUniqueId');
  return nativeCall(() => addon.ncclUniqueId());
}

/** The id as base64, for passing through an environment variable or a file. */
export function ncclIdToString(id: Uint8Array): string {
  return Buffer.from(id.buffer, id.byteOffset, id.byteLength).toString('base64');
}

/** The id back from {@link ncclIdToString}. */
export function ncclIdFromString(s: string): Uint8Array {
  const id = new Uint8Array(Buffer.from(s, 'base64'));
  if (id.length !== 128) throw new CutlossError('E_OPTION', `ncclIdFromString: expected 128 bytes, got ${id.length}`);
  return id;
}

/**
 * Joins the NCCL communicator `id` as `rank` of `size` (blocks until all ranks join), on the
 * current CUDA device. E_BACKEND with the reason where libnccl or a GPU is absent.
 *
 * @example
 * const comm = ncclCommunicator({ id, rank, size });
 */
export function ncclCommunicator(args: { id: Uint8Array; rank: number; size: number }): NcclCommunicator {
  const { id, rank, size } = args ?? ({} as never);
  if (!(id instanceof Uint8Array) || id.length !== 128) {
    throw new CutlossError('E_OPTION', 'ncclCommunicator: id must be the 128-byte Uint8Array of ncclUniqueId()');
  }
  if (!Number.isInteger(size) || size < 1 || !Number.isInteger(rank) || rank < 0 || rank >= size) {
    throw new CutlossError('E_OPTION', `ncclCommunicator: need integers 0 <= rank < size, got rank ${String(rank)}, size ${String(size)}`);
  }
  const addon = ready('ncclCommunicator');
  let comm: number | null = nativeCall(() => addon.ncclCommInit(id, rank, size));
  return Object.freeze({
    rank,
    size,
    allReduce(data: Float32Array | Float64Array, op: 'sum' | 'max') {
      if (comm === null) throw new CutlossError('E_DISPOSED', 'ncclCommunicator: destroyed');
      const c = comm;
      nativeCall(() => addon.ncclAllReduce(c, data, op));
    },
    destroy() {
      if (comm !== null) addon.ncclCommDestroy(comm);
      comm = null;
    },
  });
}
