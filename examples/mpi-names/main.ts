// The first-names model (bench/demo/namesModel.ts) trained with its classifier split by
// vocabulary over the MPI processes: each rank computes the loss with its rows of W2 and b2
// (vocabParallel), gets the global loss and the full dh, and its own rows of dW2 / db2.
//   mpirun --allow-run-as-root --oversubscribe -np 2 npx tsx examples/mpi-names/main.ts
// For brevity every rank keeps the whole model and the same Adam state, so the classifier's
// slices are gathered before the update; a large model would update only its own rows.
import { linearCrossEntropy, tensor } from '../../lib/index.js';
import { mpiWorld } from '../../lib/mpi/index.js';
import { mulberry32 } from '../../lib/random.js';
import {
  Adam, BATCH, H, V, examples, gather, initParams, loadNames, evaluate, trainStepWork,
  type LossResult, type StepSignal,
} from '../../bench/demo/namesModel.js';

const world = mpiWorld();
const steps = Number(process.env.STEPS ?? 600);
// classes [c0, c0 + nc) on this rank: an uneven split when V does not divide
const c0 = Math.floor((V * world.rank) / world.size);
const nc = Math.floor((V * (world.rank + 1)) / world.size) - c0;

const { train, held } = loadNames();
const trainSet = examples(train);
const heldSet = examples(held);
const params = initParams(42); // the same seed on every rank: the same model
const adam = new Adam();
const rng = mulberry32(7); // the same batches on every rank

function step(work: Generator<StepSignal, number, LossResult | undefined>): number {
  let r = work.next();
  while (!r.done) {
    if (r.value === undefined) {
      r = work.next();
      continue;
    }
    const [E, , labels] = r.value.loss;
    const out = linearCrossEntropy(E, tensor(params.W2.slice(c0 * H, (c0 + nc) * H), [nc, H]), labels, {
      bias: params.b2.slice(c0, c0 + nc),
      vocabParallel: { communicator: world, vocabStart: c0, vocabSize: V },
    });
    const dW2 = new Float32Array(V * H);
    dW2.set(out.dClassifier!.data as Float32Array, c0 * H);
    const db2 = new Float32Array(V);
    db2.set(out.dBias!, c0);
    world.allReduce(dW2, 'sum');
    world.allReduce(db2, 'sum');
    r = work.next({ loss: out.loss, dEmbeddings: out.dEmbeddings!, dClassifier: tensor(dW2, [V, H]), dBias: db2 });
  }
  return r.value;
}

const t0 = performance.now();
const order = new Int32Array(BATCH);
for (let s = 1; s <= steps; s++) {
  for (let i = 0; i < BATCH; i++) order[i] = Math.floor(rng() * trainSet.n);
  const { ctx, labels } = gather(trainSet, order, 0, BATCH);
  const loss = step(trainStepWork(params, params, adam, ctx, labels, s < steps * 0.8 ? 1e-2 : 1e-3));
  if (world.rank === 0 && (s % 100 === 0 || s === 1)) console.log(`step ${s}: batch loss ${loss.toFixed(4)}`);
}
if (world.rank === 0) {
  console.log(`${world.size} processes, classes split ${world.size === 1 ? 'not at all' : 'by vocabulary'}: ` +
    `${steps} steps in ${((performance.now() - t0) / 1000).toFixed(1)} s, held-out loss ${evaluate(params, heldSet).toFixed(4)}`);
}
