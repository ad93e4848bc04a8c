// One contestant in a fresh process: `node --expose-gc --import tsx bench/worker.ts '<spec json>'`.
// Order of events, so the peak-memory reading is about the call alone:
//   1. generate the inputs (E, W, labels; for tfjs also wrap them as tensors);
//   2. warm the code up on a tiny problem (JIT, kernel registration), so step 4 is not
//      dominated by compilation;
//   3. GC, reset the RSS high-water mark, read maxRSS;
//   4. the measured call (the first full-size one), read maxRSS again;
//   5. `runs` more calls, timed (the measured call served as the full-size warm-up).
// The result goes to stdout as one line `@@RESULT {json}`; progress goes to stderr.

import { writeFileSync } from 'node:fs';
import { makeInputs, sampleIndices, type Inputs } from './data.js';
import { measurePeak, median, settle, timeRuns, type PeakGrowth } from './measure.js';

export type Impl = 'cutloss' | 'tfjs';
export type Mode = 'fwdbwd' | 'fwd';

export interface WorkerSpec {
  impl: Impl;
  N: number;
  D: number;
  V: number;
  seed: number;
  /** What the measured call computes: loss and both gradients, or the loss only. */
  mode: Mode;
  /** Timed calls after the measured one (same mode). */
  runs: number;
  /** cutloss only: extra forward-only (computeGrad: false) timed calls. */
  fwdRuns?: number;
  /** Where to write dE and dW (raw f32, `<prefix>.dE.f32` / `<prefix>.dW.f32`) for a full comparison. */
  dumpGrads?: string;
}

export interface WorkerResult {
  spec: WorkerSpec;
  loss: number;
  /** Sampled gradient entries at sampleIndices() (empty in fwd mode). */
  samples: { dE: number[]; dW: number[] };
  /** max |dE|, max |dW| over all entries, for scale. */
  gradMaxAbs: { dE: number; dW: number } | null;
  memory: PeakGrowth;
  /** Bytes of the gradients the call returns: (N + V)·D·4 in fwdbwd mode, 0 in fwd mode. */
  returnedBytes: number;
  /** Input bytes (E, W, labels) allocated before the measured call. */
  inputBytes: number;
  timesMs: number[];
  medianMs: number;
  fwdTimesMs: number[];
  fwdMedianMs: number | null;
  backend: string;
}

interface Outcome {
  loss: number;
  dE: Float32Array | null;
  dW: Float32Array | null;
}

type Runner = (mode: Mode) => Outcome;

function log(msg: string): void {
  process.stderr.write(`    [${process.pid}] ${msg}\n`);
}

async function cutlossRunner(inp: Inputs): Promise<{ run: Runner; warm: () => void; backend: string }> {
  const { linearCrossEntropy, getBackend } = await import('../lib/index.js');
  const make = (x: Inputs): Runner => {
    const E = { data: x.E, shape: [x.N, x.D] as [number, number] };
    const W = { data: x.W, shape: [x.V, x.D] as [number, number] };
    return (mode) => {
      const r = linearCrossEntropy(E, W, x.labels, { computeGrad: mode === 'fwdbwd' });
      return {
        loss: r.loss as number,
        dE: (r.dEmbeddings?.data as Float32Array | undefined) ?? null,
        dW: (r.dClassifier?.data as Float32Array | undefined) ?? null,
      };
    };
  };
  const tiny = make(makeInputs(16, 32, 600, 1));
  const warm = (): void => {
    for (let i = 0; i < 3; i++) {
      tiny('fwdbwd');
      tiny('fwd');
    }
  };
  return { run: make(inp), warm, backend: `cutloss ${getBackend()}` };
}

async function tfjsRunner(inp: Inputs): Promise<{ run: Runner; warm: () => void; backend: string }> {
  const tf = await import('@tensorflow/tfjs');
  await tf.setBackend('cpu');
  await tf.ready();
  const make = (x: Inputs): Runner => {
    const e = tf.tensor2d(x.E, [x.N, x.D]);
    const w = tf.tensor2d(x.W, [x.V, x.D]);
    const l = tf.tensor1d(x.labels, 'int32');
    // Mean cross-entropy of E·Wᵀ against one-hot labels (SUM_BY_NONZERO_WEIGHTS = mean over N).
    const lossFn = (a: import('@tensorflow/tfjs').Tensor, b: import('@tensorflow/tfjs').Tensor) =>
      tf.losses.softmaxCrossEntropy(tf.oneHot(l, x.V), tf.matMul(a, b, false, true)) as import('@tensorflow/tfjs').Scalar;
    // valueAndGrads is tf.grads plus the loss value from the same pass (tf.grads calls it).
    const vg = tf.valueAndGrads(lossFn);
    return (mode) => {
      if (mode === 'fwd') {
        const v = tf.tidy(() => lossFn(e, w));
        const loss = v.dataSync()[0]!;
        v.dispose();
        return { loss, dE: null, dW: null };
      }
      const { value, grads } = tf.tidy(() => vg([e, w]));
      const loss = value.dataSync()[0]!;
      const dE = grads[0]!.dataSync() as Float32Array;
      const dW = grads[1]!.dataSync() as Float32Array;
      value.dispose();
      // The cpu backend hands out its own buffers: holding them keeps them alive past dispose.
      const out = { loss, dE, dW };
      grads.forEach((g) => g.dispose());
      return out;
    };
  };
  const tiny = make(makeInputs(16, 32, 600, 1));
  const warm = (): void => {
    for (let i = 0; i < 3; i++) {
      tiny('fwdbwd');
      tiny('fwd');
    }
  };
  return { run: make(inp), warm, backend: `tfjs ${tf.version.tfjs} (${tf.getBackend()})` };
}

function maxAbs(a: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const v = Math.abs(a[i]!);
    if (v > m) m = v;
  }
  return m;
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2] ?? '') as WorkerSpec;
  const { impl, N, D, V, seed, mode } = spec;
  log(`${impl} N=${N} D=${D} V=${V} ${mode}: generating inputs`);
  const inp = makeInputs(N, D, V, seed);
  const inputBytes = inp.E.byteLength + inp.W.byteLength + inp.labels.byteLength;
  const contestant = impl === 'cutloss' ? await cutlossRunner(inp) : await tfjsRunner(inp);
  contestant.warm();
  await settle();

  log(`${impl}: measured call (${mode})`);
  const { value: out, peak } = await measurePeak(() => contestant.run(mode));
  log(`${impl}: ${(peak.ms / 1000).toFixed(2)} s, peak RSS growth ${(peak.growthBytes / 2 ** 20).toFixed(1)} MiB`);

  const idx = sampleIndices(inp, seed);
  const samples = {
    dE: out.dE === null ? [] : idx.dE.map((i) => out.dE![i]!),
    dW: out.dW === null ? [] : idx.dW.map((i) => out.dW![i]!),
  };
  const gradMaxAbs = out.dE !== null && out.dW !== null ? { dE: maxAbs(out.dE), dW: maxAbs(out.dW) } : null;
  if (spec.dumpGrads !== undefined && out.dE !== null && out.dW !== null) {
    writeFileSync(`${spec.dumpGrads}.dE.f32`, new Uint8Array(out.dE.buffer, out.dE.byteOffset, out.dE.byteLength));
    writeFileSync(`${spec.dumpGrads}.dW.f32`, new Uint8Array(out.dW.buffer, out.dW.byteOffset, out.dW.byteLength));
  }
  const loss = out.loss;
  (out as Partial<Outcome>).dE = null;
  (out as Partial<Outcome>).dW = null;

  let timesMs: number[] = [];
  if (spec.runs > 0) {
    log(`${impl}: ${spec.runs} timed run(s) (${mode})`);
    timesMs = await timeRuns(spec.runs, () => contestant.run(mode));
  }
  let fwdTimesMs: number[] = [];
  if ((spec.fwdRuns ?? 0) > 0) {
    log(`${impl}: ${spec.fwdRuns} timed forward-only run(s)`);
    fwdTimesMs = await timeRuns(spec.fwdRuns!, () => contestant.run('fwd'));
  }

  const result: WorkerResult = {
    spec,
    loss,
    samples,
    gradMaxAbs,
    memory: peak,
    returnedBytes: mode === 'fwdbwd' ? (N + V) * D * 4 : 0,
    inputBytes,
    timesMs,
    // With no timed runs, the measured (first full-size) call is the only timing there is.
    medianMs: timesMs.length > 0 ? median(timesMs) : peak.ms,
    fwdTimesMs,
    fwdMedianMs: fwdTimesMs.length > 0 ? median(fwdTimesMs) : null,
    backend: contestant.backend,
  };
  process.stdout.write(`@@RESULT ${JSON.stringify(result)}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`worker failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
