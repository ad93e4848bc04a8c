// The scale-out hook: anything that can all-reduce an array across processes. cutloss/mpi
// and cutloss/nccl implement it; so can a user's own transport.

import { CutlossError } from './errors.js';

/**
 * A group of `size` processes, this one being `rank`, that can all-reduce in place. Every
 * rank must make the same calls in the same order with arrays of the same length.
 *
 * @example
 * const world: Communicator = { rank: 0, size: 1, allReduce() {} }; // a group of one
 */
export interface Communicator {
  readonly rank: number;
  readonly size: number;
  /** Replaces `data` on every rank with the element-wise sum or max over the ranks; returns when done. */
  allReduce(data: Float32Array | Float64Array, op: 'sum' | 'max'): void;
}

/**
 * The async twin of {@link Communicator}, for transports that must not block the JS thread.
 *
 * @example
 * await comm.allReduceAsync(sums, 'sum');
 */
export interface AsyncCommunicator {
  readonly rank: number;
  readonly size: number;
  allReduceAsync(data: Float32Array | Float64Array, op: 'sum' | 'max'): Promise<void>;
}

/** options.vocabParallel: this rank holds classes [vocabStart, vocabStart + local rows) of vocabSize. */
export interface VocabParallelOptions {
  communicator: Communicator;
  /** First global class id this rank's classifier rows (or logit columns) hold. */
  vocabStart: number;
  /** Classes over all ranks (V). */
  vocabSize: number;
}

/** options.dataParallel: the batch is split over the ranks; 'mean' divides by the global count. */
export interface DataParallelOptions {
  communicator: Communicator;
}

/** Checks the shape of a communicator (not its behaviour): E_OPTION naming the option. */
export function checkCommunicator(c: unknown, name: string): Communicator {
  const ok = typeof c === 'object' && c !== null &&
    Number.isInteger((c as Communicator).rank) && Number.isInteger((c as Communicator).size) &&
    (c as Communicator).size >= 1 && (c as Communicator).rank >= 0 && (c as Communicator).rank < (c as Communicator).size &&
    typeof (c as Communicator).allReduce === 'function';
  if (!ok) {
    throw new CutlossError('E_OPTION', `options.${name} must be a Communicator { rank, size, allReduce(data, op) } with 0 <= rank < size`);
  }
  return c as Communicator;
}
