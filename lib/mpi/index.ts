// cutloss/mpi: MPI_COMM_WORLD as a Communicator for vocabParallel and dataParallel. The addon
// loads Open MPI's libmpi at run time; MPI is initialized on first use and finalized at exit.
// Start the processes with mpirun: `mpirun -np 2 node train.js`.

import type { AsyncCommunicator, Communicator } from '../communicator.js';
import { CutlossError } from '../errors.js';
import { nativeCall, scaleOutAddon, type LibraryStatus } from '../scaleOutNative.js';

export type { Communicator, AsyncCommunicator } from '../communicator.js';

/** A Communicator that also has the async twin (it runs the same blocking collective). */
export type MpiCommunicator = Communicator & AsyncCommunicator;

let world: MpiCommunicator | null = null;

/**
 * Whether MPI can be used here, and why not: loads libmpi, never initializes MPI.
 *
 * @example
 * if (!mpiStatus().available) console.log(mpiStatus().reason);
 */
export function mpiStatus(): LibraryStatus {
  const { addon, error } = scaleOutAddon();
  if (addon === null) return { available: false, reason: error };
  return addon.mpiStatus();
}

/**
 * MPI_COMM_WORLD: this process's rank and the number of processes mpirun started. The first
 * call initializes MPI (MPI_THREAD_SINGLE: call it from the main thread), and the process
 * finalizes it at exit. E_BACKEND with the reason where MPI is absent.
 *
 * @example
 * const world = mpiWorld();
 * linearCrossEntropy(E, W_local, labels, { vocabParallel: { communicator: world, vocabStart, vocabSize } });
 */
export function mpiWorld(): MpiCommunicator {
  if (world !== null) return world;
  const { addon, error } = scaleOutAddon();
  if (addon === null) throw new CutlossError('E_BACKEND', `cutloss/mpi: ${error}`);
  const status = addon.mpiStatus();
  if (!status.available) throw new CutlossError('E_BACKEND', `cutloss/mpi: ${status.reason}`);
  const { rank, size } = nativeCall(() => addon.mpiWorld());
  process.once('exit', () => addon.mpiFinalize());
  const allReduce = (data: Float32Array | Float64Array, op: 'sum' | 'max'): void => {
    if (!(data instanceof Float32Array) && !(data instanceof Float64Array)) {
      throw new CutlossError('E_DTYPE', 'allReduce: data must be a Float32Array or Float64Array');
    }
    if (op !== 'sum' && op !== 'max') throw new CutlossError('E_OPTION', `allReduce: op must be 'sum' or 'max', got ${String(op)}`);
    nativeCall(() => addon.mpiAllReduce(data, op));
  };
  world = Object.freeze({
    rank,
    size,
    allReduce,
    allReduceAsync: async (data: Float32Array | Float64Array, op: 'sum' | 'max') => allReduce(data, op),
  });
  return world;
}
