// The training loop of the server: steps on the names data (and on text posted to it), each
// step's result published to a WeightStore between steps.
//
// Modes: 'async' runs the loss on the libuv pool (linearCrossEntropyAsync) and cuts the step's
// own JS work (hidden layer, backward, Adam) into slices of `slice` rows that yield to the
// event loop between them; 'sync' runs each step in one piece with the sync ops, as the demo
// does, and lets the event loop run between steps; 'off' does not train.

import {
  Adam, BATCH, examples, examplesOfIds, gather, initParams, loadNames, runStep, runStepAsync, shuffle, trainStepWork,
  type Split,
} from '../../bench/demo/namesModel.js';
import { mulberry32 } from '../../lib/random.js';
import { WeightStore } from './weights.js';

export type TrainMode = 'async' | 'sync' | 'off';
export const trainModes: readonly TrainMode[] = ['async', 'sync', 'off'];

export interface TrainerOptions {
  mode?: TrainMode;
  /** Adam's rate, constant: the server trains for as long as it runs. Default 2e-3. */
  lr?: number;
  /** Rows per slice of the step's JS work in 'async' mode. Default 8 (~0.3 ms on our machines). */
  slice?: number;
  /** Seeds the order of the data (the initial weights are the demo's). Default 7, the demo's. */
  seed?: number;
}

export interface Failure {
  /** Which attempt failed, counting successful and failed steps (it was skipped; the weights did not change). */
  step: number;
  /** The submission whose data it was, if it was posted data; its remaining rows were dropped. */
  submission: number | null;
  error: string;
  at: string;
}

interface Submission { id: number; data: Split; next: number }

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));
const errorText = (e: unknown) =>
  e instanceof Error ? `${(e as { code?: string }).code ?? e.name}: ${e.message}` : String(e);

export class Trainer {
  readonly mode: TrainMode;
  readonly lr: number;
  readonly slice: number;
  readonly store: WeightStore;
  readonly adam = new Adam();

  #base: Split;
  #learned: Split[] = []; // posted data that trained, merged into #base at the next epoch
  #order = new Int32Array(0);
  #cursor = 0;
  #shuffler: () => number;
  #queue: Submission[] = [];
  #nextId = 1;

  #loop: Promise<void> | null = null;
  #stopping = false;
  #inStep = false;

  // Counters since start, and since the last resetWindow().
  steps = 0;
  failedSteps = 0;
  tokens = 0;
  lossEma = NaN;
  lastFailure: Failure | null = null;
  submissions = { accepted: 0, trained: 0, failed: 0 };
  #windowStart = performance.now();
  #windowTokens = 0;
  #windowSteps = 0;
  #windowStepMs = 0;

  constructor(options: TrainerOptions = {}) {
    this.mode = options.mode ?? 'async';
    this.lr = options.lr ?? 2e-3;
    this.slice = options.slice ?? 8;
    const seed = options.seed ?? 7;
    this.#base = examples(loadNames().train);
    this.store = new WeightStore(initParams(42));
    this.#shuffler = mulberry32(seed);
  }

  /** Whether a step is under way (between its first slice and its publish). */
  get inStep(): boolean { return this.#inStep; }
  get queuedExamples(): number { return this.#queue.reduce((n, s) => n + s.data.n - s.next, 0); }
  get queuedSubmissions(): number { return this.#queue.length; }

  /**
   * Queue posted data: names (a–z, checked by the caller) or sequences of character ids
   * (taken as they are: an id outside the vocabulary fails its step, which is reported).
   */
  submit(data: { names: string[] } | { ids: number[][] }): { id: number; examples: number } {
    const split = 'names' in data ? examples(data.names) : examplesOfIds(data.ids);
    const id = this.#nextId++;
    this.#queue.push({ id, data: split, next: 0 });
    this.submissions.accepted++;
    return { id, examples: split.n };
  }

  /** The next batch: posted data first, in order of arrival; else the next rows of the epoch. */
  #nextBatch(): { ctx: Int32Array; labels: Int32Array; submission: Submission | null } {
    const sub = this.#queue[0];
    if (sub !== undefined) {
      const lo = sub.next, hi = Math.min(sub.data.n, lo + BATCH);
      const order = Int32Array.from({ length: hi - lo }, (_, i) => lo + i);
      return { ...gather(sub.data, order, 0, hi - lo), submission: sub };
    }
    if (this.#cursor >= this.#order.length) this.#newEpoch();
    const lo = this.#cursor, hi = Math.min(this.#order.length, lo + BATCH);
    this.#cursor = hi;
    return { ...gather(this.#base, this.#order, lo, hi), submission: null };
  }

  #newEpoch(): void {
    if (this.#learned.length > 0) {
      const all = [this.#base, ...this.#learned];
      const X = new Int32Array(all.reduce((n, s) => n + s.X.length, 0));
      const Y = new Int32Array(all.reduce((n, s) => n + s.n, 0));
      let x = 0, y = 0;
      for (const s of all) { X.set(s.X, x); Y.set(s.Y, y); x += s.X.length; y += s.n; }
      this.#base = { X, Y, n: Y.length };
      this.#learned = [];
    }
    const idx = Array.from({ length: this.#base.n }, (_, i) => i);
    shuffle(idx, this.#shuffler);
    this.#order = Int32Array.from(idx);
    this.#cursor = 0;
  }

  /**
   * One step, whatever the loop is doing: the new weights are published when it succeeds;
   * when it fails, nothing changes but the counters and the dropped submission. Returns
   * whether it succeeded.
   */
  async step(): Promise<boolean> {
    // Two steps at once would both build on the same weights and publish twice.
    if (this.#inStep) throw new Error('a step is already under way');
    this.#inStep = true;
    const { ctx, labels, submission } = this.#nextBatch();
    const src = this.store.current.params;
    const draft = this.store.draft();
    const t0 = performance.now();
    try {
      const work = trainStepWork(src, draft, this.adam, ctx, labels, this.lr, this.mode === 'async' ? this.slice : Infinity);
      const loss = this.mode === 'async' ? await runStepAsync(work) : runStep(work);
      this.store.publish(draft);
      this.steps++;
      this.tokens += labels.length;
      this.#windowSteps++;
      this.#windowTokens += labels.length;
      this.#windowStepMs += performance.now() - t0;
      this.lossEma = Number.isNaN(this.lossEma) ? loss : 0.98 * this.lossEma + 0.02 * loss;
      if (submission !== null) {
        submission.next += labels.length;
        if (submission.next >= submission.data.n) {
          this.#queue.shift();
          this.#learned.push(submission.data);
          this.submissions.trained++;
        }
      }
      return true;
    } catch (e) {
      this.store.discard(draft);
      this.failedSteps++;
      this.lastFailure = {
        step: this.steps + this.failedSteps, submission: submission?.id ?? null, error: errorText(e),
        at: new Date().toISOString(),
      };
      if (submission !== null) {
        this.#queue.splice(this.#queue.indexOf(submission), 1);
        this.submissions.failed++;
      }
      return false;
    } finally {
      this.#inStep = false;
    }
  }

  /** Train until stop(); 'off' only waits for it. */
  start(onFailure?: (f: Failure) => void): void {
    if (this.#loop !== null || this.mode === 'off') return;
    this.#stopping = false;
    this.#loop = (async () => {
      while (!this.#stopping) {
        if (!(await this.step())) onFailure?.(this.lastFailure!);
        await nextTurn(); // let requests in between steps (sync mode's only chance)
      }
    })();
  }

  /** Finish the step under way, then stop; resolves when no step runs. */
  async stop(): Promise<void> {
    this.#stopping = true;
    await this.#loop;
    this.#loop = null;
  }

  /** Throughput since the last resetWindow() (or the start). */
  window(): { seconds: number; steps: number; tokens: number; tokensPerSecond: number; stepMs: number } {
    const seconds = (performance.now() - this.#windowStart) / 1000;
    return {
      seconds, steps: this.#windowSteps, tokens: this.#windowTokens,
      tokensPerSecond: this.#windowTokens / seconds,
      stepMs: this.#windowSteps > 0 ? this.#windowStepMs / this.#windowSteps : NaN,
    };
  }

  resetWindow(): void {
    this.#windowStart = performance.now();
    this.#windowTokens = this.#windowSteps = this.#windowStepMs = 0;
  }
}
