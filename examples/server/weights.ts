// Weights that change between training steps while requests read them.
//
// A published set of weights is never written again: a step reads the current set and writes
// its result into a draft (buffers nobody reads), then publish() makes the draft current in one
// assignment. A request that may span awaits holds a lease (acquire / release) on the set it
// started with, so it sees one version from start to end, however many steps land meanwhile.
// A retired set is reused as a draft only once its last lease is released.

import { zeroParams, type Params } from '../../bench/demo/namesModel.js';

export interface Snapshot {
  readonly params: Params;
  /** Number of steps that produced these weights. */
  readonly version: number;
}

interface Entry extends Snapshot { readers: number }

export class WeightStore {
  #current: Entry;
  #free: Params[] = [];
  #allocated = 1;
  #leases = 0;

  constructor(params: Params, version = 0) {
    this.#current = { params, version, readers: 0 };
  }

  /** The current weights, for code that finishes with them before it next yields. */
  get current(): Snapshot { return this.#current; }

  /** Buffer sets allocated so far: the current one, drafts, and those held by leases. */
  get allocated(): number { return this.#allocated; }

  /** Leases held now, over every version. */
  get leases(): number { return this.#leases; }

  /** Hold the current weights until release(): they stay unchanged and are never reused meanwhile. */
  acquire(): Snapshot {
    this.#current.readers++;
    this.#leases++;
    return this.#current;
  }

  release(s: Snapshot): void {
    const e = s as Entry;
    if (!(e.readers > 0)) throw new Error(`release of weights version ${s.version} that hold no lease`);
    e.readers--;
    this.#leases--;
    if (e.readers === 0 && e !== this.#current) this.#free.push(e.params);
  }

  /** Run `fn` with a lease on the current weights. */
  async with<T>(fn: (s: Snapshot) => Promise<T> | T): Promise<T> {
    const s = this.acquire();
    try {
      return await fn(s);
    } finally {
      this.release(s);
    }
  }

  /** Buffers for the next step's result: not current and not leased, contents undefined. */
  draft(): Params {
    const p = this.#free.pop();
    if (p !== undefined) return p;
    this.#allocated++;
    return zeroParams();
  }

  /** A draft that will not be published (its step failed) goes back to the free list. */
  discard(p: Params): void {
    this.#free.push(p);
  }

  /** Make a finished draft the current weights; the old set is freed once nobody reads it. */
  publish(p: Params): Snapshot {
    const old = this.#current;
    this.#current = { params: p, version: old.version + 1, readers: 0 };
    if (old.readers === 0) this.#free.push(old.params);
    return this.#current;
  }
}
