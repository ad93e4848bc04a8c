// One rank of the scale-out checks, started by test/mpi/scaleout.test.ts under mpirun. Every
// rank builds the same global problem, solves it whole in this process (the reference), then
// its share through vocabParallel / dataParallel over MPI_COMM_WORLD, and compares: loss, lse,
// dEmbeddings, its dClassifier / dBias rows, its dLogits columns. Prints one RESULT line.
//   tsx test/mpi/worker.ts <backends, e.g. js,cpu> <dtypes, e.g. f32,bf16> [quick]
import {
  CutlossError, crossEntropy, linearCrossEntropy, setBackend, tensor,
  type BackendName, type CrossEntropyOptions, type Tensor,
} from '../../lib/index.js';
import { mpiWorld } from '../../lib/mpi/index.js';
import { casesFor, classWeightsFor } from '../cases.js';
import * as ref from '../reference64.js';

const world = mpiWorld();
const [backendArg = 'js', dtypeArg = 'f32', quickArg] = process.argv.slice(2);
const quick = quickArg === 'quick';
const failures: string[] = [];
let checks = 0;

const [N, D, V] = [9, 5, 37];

/** Uneven class ranges: rank r gets a share proportional to r + 2. */
function split(total: number, size: number, rank: number): [number, number] {
  const weights = Array.from({ length: size }, (_, r) => r + 2);
  const sum = weights.reduce((a, b) => a + b, 0);
  const ends = weights.map((_, r) => Math.round((total * weights.slice(0, r + 1).reduce((a, b) => a + b, 0)) / sum));
  const start = rank === 0 ? 0 : ends[rank - 1]!;
  return [start, ends[rank]! - start];
}

function values(t: Tensor | Float32Array | undefined): Float64Array {
  if (t === undefined) return new Float64Array(0);
  if (t instanceof Float32Array) return Float64Array.from(t);
  if (t.dtype === 'bf16') return Float64Array.from(t.data as Uint16Array, ref.bf16ToF32);
  return Float64Array.from(t.data as Float32Array);
}

function close(what: string, got: ArrayLike<number> | number, want: ArrayLike<number> | number, tol: number): void {
  checks++;
  const g = typeof got === 'number' ? [got] : Array.from(got);
  const w = typeof want === 'number' ? [want] : Array.from(want);
  if (g.length !== w.length) {
    failures.push(`${what}: length ${g.length} vs ${w.length}`);
    return;
  }
  let scale = 1;
  for (const x of w) if (Number.isFinite(x)) scale = Math.max(scale, Math.abs(x));
  for (let i = 0; i < g.length; i++) {
    const a = g[i]!;
    const b = w[i]!;
    if (Number.isNaN(b) ? !Number.isNaN(a) : !(Math.abs(a - b) <= tol * scale)) {
      failures.push(`${what}[${i}]: ${a} vs ${b} (tol ${tol}·${scale.toPrecision(3)})`);
      return;
    }
  }
}

const lossValues = (l: number | Float32Array): number | Float64Array => (typeof l === 'number' ? l : values(l));

function rowsOf(t: Tensor | undefined, cols: number, r0: number, nr: number): Float64Array {
  return values(t).subarray(r0 * cols, (r0 + nr) * cols);
}

function colsOf(t: Tensor | undefined, rows: number, cols: number, c0: number, nc: number): Float64Array {
  const v = values(t);
  const out = new Float64Array(rows * nc);
  for (let i = 0; i < rows; i++) for (let j = 0; j < nc; j++) out[i * nc + j] = v[i * cols + c0 + j]!;
  return out;
}

function asTensor(v: Float32Array, shape: [number, number], dtype: 'f32' | 'bf16'): Tensor {
  return dtype === 'f32' ? tensor(v, shape) : tensor(Uint16Array.from(v, ref.f32ToBf16), shape, 'bf16');
}

function problem(o: CrossEntropyOptions, dtype: 'f32' | 'bf16') {
  const rng = ref.mulberry32(1234);
  const E = Float32Array.from(ref.randomRows(rng, N, D, 1).flat());
  const W = Float32Array.from(ref.randomRows(rng, V, D, 1).flat());
  const bias = Float32Array.from(ref.randomRows(rng, 1, V, 0.5)[0]!);
  const labels = Int32Array.from(ref.randomLabels(rng, N, V));
  labels[1] = o.ignoreIndex ?? -100;
  labels[N - 2] = V - 1; // the last rank's last class
  labels[0] = 0;
  const Et = asTensor(E, [N, D], dtype);
  const Wt = asTensor(W, [V, D], dtype);
  // dense logits from the (possibly bf16-rounded) inputs, in f64, then f32
  const e = values(Et);
  const w = values(Wt);
  const logits = new Float32Array(N * V);
  for (let i = 0; i < N; i++) {
    for (let j = 0; j < V; j++) {
      let s = bias[j]!;
      for (let d = 0; d < D; d++) s += e[i * D + d]! * w[j * D + d]!;
      logits[i * V + j] = s;
    }
  }
  return { Et, Wt, W, bias, labels, logits };
}

function sliceOptions(o: CrossEntropyOptions, c0: number, nc: number): CrossEntropyOptions {
  return o.classWeights === undefined ? o : { ...o, classWeights: o.classWeights.slice(c0, c0 + nc) };
}

function vocabCase(name: string, o: CrossEntropyOptions, dtype: 'f32' | 'bf16', tol: number): void {
  const { Et, Wt, W, bias, labels, logits } = problem(o, dtype);
  const [c0, nc] = split(V, world.size, world.rank);
  const vocabParallel = { communicator: world, vocabStart: c0, vocabSize: V };
  const tag = `${name} [${dtype}, vocab ${c0}+${nc}]`;
  // linear
  const full = linearCrossEntropy(Et, Wt, labels, { ...o, bias, returnLse: true });
  const Wl = asTensor(W.slice(c0 * D, (c0 + nc) * D), [nc, D], dtype);
  const sh = linearCrossEntropy(Et, Wl, labels, { ...sliceOptions(o, c0, nc), bias: bias.slice(c0, c0 + nc), returnLse: true, vocabParallel });
  close(`linear ${tag} loss`, lossValues(sh.loss), lossValues(full.loss), tol);
  close(`linear ${tag} lse`, values(sh.lse), values(full.lse), tol);
  if (o.computeGrad !== false) {
    close(`linear ${tag} dE`, values(sh.dEmbeddings), values(full.dEmbeddings), tol);
    close(`linear ${tag} dW`, values(sh.dClassifier), rowsOf(full.dClassifier, D, c0, nc), tol);
    close(`linear ${tag} dBias`, values(sh.dBias), values(full.dBias).subarray(c0, c0 + nc), tol);
  }
  // dense logits, column-sharded
  const X = asTensor(logits, [N, V], dtype);
  const fullCe = crossEntropy(X, labels, { ...o, returnLse: true });
  const Xl = asTensor(Float32Array.from(colsOf(tensor(logits, [N, V]), N, V, c0, nc)), [N, nc], dtype);
  const shCe = crossEntropy(Xl, labels, { ...sliceOptions(o, c0, nc), returnLse: true, vocabParallel });
  close(`dense ${tag} loss`, lossValues(shCe.loss), lossValues(fullCe.loss), tol);
  close(`dense ${tag} lse`, values(shCe.lse), values(fullCe.lse), tol);
  if (o.computeGrad !== false) close(`dense ${tag} dLogits`, values(shCe.dLogits), colsOf(fullCe.dLogits, N, V, c0, nc), tol);
}

function dataCase(name: string, o: CrossEntropyOptions, dtype: 'f32' | 'bf16', tol: number): void {
  const { Et, Wt, bias, labels } = problem(o, dtype);
  const [r0, nr] = split(N, world.size, world.rank);
  const tag = `${name} [${dtype}, rows ${r0}+${nr}]`;
  const full = linearCrossEntropy(Et, Wt, labels, { ...o, bias });
  const Eraw = values(Et);
  const El = dtype === 'f32'
    ? tensor(Float32Array.from(Eraw.subarray(r0 * D, (r0 + nr) * D)), [nr, D])
    : tensor((Et.data as Uint16Array).slice(r0 * D, (r0 + nr) * D), [nr, D], 'bf16');
  const gradScale = o.gradScale instanceof Float32Array ? o.gradScale.slice(r0, r0 + nr) : o.gradScale;
  const sh = linearCrossEntropy(El, Wt, labels.slice(r0, r0 + nr), { ...o, gradScale, bias, dataParallel: { communicator: world } });
  const wantLoss = typeof full.loss === 'number' ? full.loss : values(full.loss).subarray(r0, r0 + nr);
  close(`data ${tag} loss`, typeof sh.loss === 'number' ? sh.loss : values(sh.loss), wantLoss, tol);
  close(`data ${tag} dE rows`, values(sh.dEmbeddings), rowsOf(full.dEmbeddings, D, r0, nr), tol);
  // the ranks' dW and dBias add up to the whole batch's
  const dW = Float64Array.from(values(sh.dClassifier));
  const dB = Float64Array.from(values(sh.dBias));
  world.allReduce(dW, 'sum');
  world.allReduce(dB, 'sum');
  close(`data ${tag} ΣdW`, dW, values(full.dClassifier), tol);
  close(`data ${tag} ΣdBias`, dB, values(full.dBias), tol);
}

/** Harmonic logits (no bias): each rank's distances are its own, so the sharded loss is the whole one. */
function harmonicCase(name: string, o: CrossEntropyOptions, dtype: 'f32' | 'bf16', tol: number): void {
  const { Et, Wt, W, labels } = problem(o, dtype);
  const [c0, nc] = split(V, world.size, world.rank);
  const h = { ...o, logits: { kind: 'harmonic', exponent: 3 } } as CrossEntropyOptions;
  const tag = `harmonic ${name} [${dtype}, vocab ${c0}+${nc}]`;
  const full = linearCrossEntropy(Et, Wt, labels, h);
  const Wl = asTensor(W.slice(c0 * D, (c0 + nc) * D), [nc, D], dtype);
  const sh = linearCrossEntropy(Et, Wl, labels, { ...sliceOptions(h, c0, nc), vocabParallel: { communicator: world, vocabStart: c0, vocabSize: V } });
  close(`${tag} loss`, lossValues(sh.loss), lossValues(full.loss), tol);
  if (o.computeGrad === false) return;
  close(`${tag} dE`, values(sh.dEmbeddings), values(full.dEmbeddings), tol);
  close(`${tag} dW`, values(sh.dClassifier), rowsOf(full.dClassifier, D, c0, nc), tol);
}
const HARMONIC = new Set(['plain mean', 'class weights + smoothing', 'none with per-row gradScale']);

/**
 * Margin softmax (cosine logits, CosFace + ArcFace margins at the label): each rank normalizes its
 * own classes, and only the rank that owns a row's label may map that column.
 */
function cosineCase(name: string, o: CrossEntropyOptions, dtype: 'f32' | 'bf16', tol: number): void {
  const { Et, Wt, W, labels } = problem(o, dtype);
  const [c0, nc] = split(V, world.size, world.rank);
  const c = { ...o, logits: { kind: 'cosine', scale: 8, margin: 0.1, angularMargin: 0.3 } } as CrossEntropyOptions;
  const tag = `cosine ${name} [${dtype}, vocab ${c0}+${nc}]`;
  const full = linearCrossEntropy(Et, Wt, labels, { ...c, returnLse: true });
  const Wl = asTensor(W.slice(c0 * D, (c0 + nc) * D), [nc, D], dtype);
  const sh = linearCrossEntropy(Et, Wl, labels, {
    ...sliceOptions(c, c0, nc), returnLse: true, vocabParallel: { communicator: world, vocabStart: c0, vocabSize: V },
  });
  close(`${tag} loss`, lossValues(sh.loss), lossValues(full.loss), tol);
  close(`${tag} lse`, values(sh.lse), values(full.lse), tol);
  if (o.computeGrad === false) return;
  close(`${tag} dE`, values(sh.dEmbeddings), values(full.dEmbeddings), tol);
  close(`${tag} dW`, values(sh.dClassifier), rowsOf(full.dClassifier, D, c0, nc), tol);
}

const QUICK = new Set(['plain mean', 'none with per-row gradScale', 'class weights + smoothing', 'squentropy',
  'stablemax + smoothing + weights', 'everything, sum', 'everything, mean, stablemax']);

for (const backend of backendArg.split(',') as BackendName[]) {
  setBackend(backend);
  for (const dtype of dtypeArg.split(',') as ('f32' | 'bf16')[]) {
    // fp32 results agree to ~1e-5 of the largest entry; bf16 results are rounded to 8 bits
    const tol = dtype === 'f32' ? 2e-5 : 1e-2;
    const cases = casesFor(N, V).filter(([name]) => !quick || QUICK.has(name));
    cases.push(['forward only, none', { reduction: 'none', computeGrad: false, classWeights: classWeightsFor(V), labelSmoothing: 0.1 }]);
    for (const [name, o] of cases) {
      if (o.normalizer === 'sparsemax') {
        checks++;
        try {
          vocabCase(name, o, dtype, tol);
          failures.push(`${name}: sparsemax sharded did not throw`);
        } catch (e) {
          if (!(e instanceof CutlossError) || e.code !== 'E_OPTION') failures.push(`${name}: ${String(e)}`);
        }
        continue;
      }
      try {
        vocabCase(`${backend} ${name}`, o, dtype, tol);
        if (o.computeGrad !== false) dataCase(`${backend} ${name}`, o, dtype, tol);
        if (HARMONIC.has(name)) harmonicCase(`${backend} ${name}`, o, dtype, tol);
        if (HARMONIC.has(name)) cosineCase(`${backend} ${name}`, o, dtype, tol);
      } catch (e) {
        failures.push(`${backend} ${name} [${dtype}]: threw ${e instanceof Error ? e.stack : String(e)}`);
      }
    }
  }
}

console.log(`RESULT ${JSON.stringify({ rank: world.rank, size: world.size, checks, failures: failures.slice(0, 20), failed: failures.length })}`);
process.exitCode = failures.length === 0 ? 0 : 1;
