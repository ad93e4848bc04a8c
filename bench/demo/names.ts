// A character-level language model of first names, trained end to end with cutloss.
// The previous K characters → embeddings → one tanh layer → linearCrossEntropy over the
// 27 characters ('.' marks start and end). cutloss gives the loss and the gradients of the
// last layer (dEmbeddings, dClassifier, dBias); the rest of the backward, the data and the
// model live in namesModel.ts, which the training server (examples/server/) shares.
//
//   npm run demo                 (default: 10 epochs, about 1 minute on 2 cores)
//   npx tsx bench/demo/names.ts --quick | --epochs N
//
// Exits with code 1 unless the held-out loss ends clearly below the unigram baseline.

import { getBackend } from '../../lib/index.js';
import { mulberry32 as rng } from '../../lib/random.js';
import {
  Adam, BATCH, DE, H, K, V, evaluate, examples, gather, initParams, loadNames, runStep, sampleNames, shuffle, trainStepWork,
} from './namesModel.js';

const t0 = performance.now();

// ---------------------------------------------------------------- flags

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const ei = args.indexOf('--epochs');
const EPOCHS = ei >= 0 ? Number(args[ei + 1]) : quick ? 2 : 10;
if (!Number.isInteger(EPOCHS) || EPOCHS < 1) {
  console.error(`--epochs needs a positive integer, got ${args[ei + 1]}`);
  process.exit(2);
}
const unknown = args.filter((a, i) => a !== '--quick' && a !== '--epochs' && !(ei >= 0 && i === ei + 1));
if (unknown.length > 0) {
  console.error(`unknown argument(s): ${unknown.join(' ')}  (use --quick or --epochs N)`);
  process.exit(2);
}

const LR = 4e-3; // Adam's peak rate, cosine-decayed to 10% over the run
const MARGIN = 0.3; // nats below the unigram baseline needed to pass

// ---------------------------------------------------------------- data

const { names, train: trainNames, held: heldNames } = loadNames();
const train = examples(trainNames);
const held = examples(heldNames);

console.log(`cutloss names demo  (backend: ${getBackend()})`);
console.log(
  `${names.length} names (${trainNames.length} train / ${heldNames.length} held-out), ` +
    `${train.n} / ${held.n} character positions, vocabulary ${V}`,
);

// ---------------------------------------------------------------- baselines

// Unigram: cross-entropy of the train character distribution on held-out targets
// (add-one smoothing only guards against a zero count).
const uni = new Float64Array(V).fill(1);
for (const y of train.Y) uni[y]! += 1;
const uniTotal = uni.reduce((a, b) => a + b, 0);
let uniCE = 0;
for (const y of held.Y) uniCE -= Math.log(uni[y]! / uniTotal);
uniCE /= held.n;

// Bigram: previous character only, add-one smoothed; a cheap bar the MLP should also clear.
const bi = new Float64Array(V * V).fill(1);
for (let i = 0; i < train.n; i++) bi[train.X[i * K + K - 1]! * V + train.Y[i]!]! += 1;
let biCE = 0;
for (let i = 0; i < held.n; i++) {
  const prev = held.X[i * K + K - 1]!;
  let row = 0;
  for (let j = 0; j < V; j++) row += bi[prev * V + j]!;
  biCE -= Math.log(bi[prev * V + held.Y[i]!]! / row);
}
biCE /= held.n;

console.log(`unigram entropy of held-out characters (train distribution): ${uniCE.toFixed(4)} nats`);
console.log(`bigram baseline on held-out:                               ${biCE.toFixed(4)} nats`);
console.log(`model: context ${K} × embedding ${DE} → tanh ${H} → linearCrossEntropy over ${V}; ${EPOCHS} epoch(s)`);

// ---------------------------------------------------------------- model and Adam

const params = initParams(42);
const adam = new Adam();

// ---------------------------------------------------------------- training

const tty = process.stdout.isTTY === true;
const bar = (f: number, loss: number) => {
  const w = 30, n = Math.round(f * w);
  return `[${'#'.repeat(n)}${'.'.repeat(w - n)}] ${String(Math.round(f * 100)).padStart(3)}% loss ${loss.toFixed(3)}`;
};

const shuffler = rng(7);
const stepsPerEpoch = Math.ceil(train.n / BATCH);
const totalSteps = EPOCHS * stepsPerEpoch;
const heldLosses: number[] = [];
for (let epoch = 1; epoch <= EPOCHS; epoch++) {
  const te = performance.now();
  const idx = Array.from({ length: train.n }, (_, i) => i);
  shuffle(idx, shuffler);
  const order = Int32Array.from(idx);
  let running = 0, seen = 0, nextQuarter = 1;
  for (let s = 0; s < stepsPerEpoch; s++) {
    const lo = s * BATCH, hi = Math.min(train.n, lo + BATCH);
    // Cosine decay from LR to LR/10 over the whole run.
    const lr = LR * (0.1 + 0.45 * (1 + Math.cos((Math.PI * adam.step) / totalSteps)));
    const { ctx, labels } = gather(train, order, lo, hi);
    running += runStep(trainStepWork(params, params, adam, ctx, labels, lr)) * (hi - lo);
    seen += hi - lo;
    const f = (s + 1) / stepsPerEpoch;
    if (tty && (s % 20 === 0 || s + 1 === stepsPerEpoch)) {
      process.stdout.write(`\repoch ${epoch}/${EPOCHS} ${bar(f, running / seen)}`);
    } else if (!tty && f >= nextQuarter / 4) {
      console.log(`epoch ${epoch}/${EPOCHS} ${bar(f, running / seen)}`);
      nextQuarter++;
    }
  }
  if (tty) process.stdout.write('\n');
  const trainLoss = evaluate(params, train), heldLoss = evaluate(params, held);
  heldLosses.push(heldLoss);
  console.log(
    `epoch ${epoch}/${EPOCHS}: train loss ${trainLoss.toFixed(4)}  held-out loss ${heldLoss.toFixed(4)}  ` +
      `(${((performance.now() - te) / 1000).toFixed(1)} s)`,
  );
}

// ---------------------------------------------------------------- verdict

const final = heldLosses[heldLosses.length - 1]!;
const gain = uniCE - final;
console.log(
  `\nheld-out loss ${final.toFixed(4)} nats vs unigram entropy ${uniCE.toFixed(4)} nats: ` +
    `${gain.toFixed(4)} nats below it (bigram ${biCE.toFixed(4)}); need ≥ ${MARGIN}`,
);

// ---------------------------------------------------------------- sampling

// Logits of one context, h·W2ᵀ + b2, then the library's softmax with a temperature.
const TEMPERATURE = 0.8;
const known = new Set(names);
const samples = sampleNames(params, 10, rng(2024), TEMPERATURE).map((name) => (known.has(name) ? name : `${name}*`));
console.log(`samples (temperature ${TEMPERATURE}; * = not in the data set): ${samples.join(', ')}`);
console.log(`elapsed ${((performance.now() - t0) / 1000).toFixed(1)} s`);

if (!(gain >= MARGIN)) {
  console.error(`FAIL: held-out loss is not at least ${MARGIN} nats below the unigram entropy`);
  process.exit(1);
}
