// One rank of Partial FC over vocabParallel, started by test/mpi/scaleout.test.ts under mpirun:
// each rank holds a slice of W and samples it (classSample); the sharded loss must equal one
// process's plain loss over the union of every rank's sample (which each rank recomputes: a
// slice's sample depends only on the labels, the slice and the seed), and the rank's
// dClassifier rows must be that reference's rows of its sampled classes. Prints one RESULT line.
//   tsx test/mpi/classSampleWorker.ts <backends, e.g. js,cpu>
import { linearCrossEntropy, setBackend, tensor, type BackendName, type Tensor } from '../../lib/index.js';
import { sampleClasses } from '../../lib/classSample.js';
import { mpiWorld } from '../../lib/mpi/index.js';
import * as ref from '../reference64.js';

const world = mpiWorld();
const failures: string[] = [];
let checks = 0;
const [N, D, V] = [11, 6, 53];
const sample = { fraction: 0.35, seed: 2024 };

function split(rank: number): [number, number] {
  const ends = Array.from({ length: world.size }, (_, r) => Math.round((V * (r + 1)) / world.size));
  const start = rank === 0 ? 0 : ends[rank - 1]!;
  return [start, ends[rank]! - start];
}

function close(what: string, got: ArrayLike<number>, want: ArrayLike<number>, tol: number): void {
  checks++;
  if (got.length !== want.length) {
    failures.push(`${what}: length ${got.length} vs ${want.length}`);
    return;
  }
  for (let i = 0; i < got.length; i++) {
    if (!(Math.abs(got[i]! - want[i]!) <= tol * (1 + Math.abs(want[i]!)))) {
      failures.push(`${what}[${i}]: ${got[i]} vs ${want[i]}`);
      return;
    }
  }
}

const rng = ref.mulberry32(77);
const E = Float32Array.from({ length: N * D }, () => ref.randn(rng));
const W = Float32Array.from({ length: V * D }, () => ref.randn(rng) * 0.5);
const bias = Float32Array.from({ length: V }, () => ref.randn(rng));
const labels = Int32Array.from({ length: N }, (_, n) => (n === 4 ? -100 : Math.floor(rng() * V)));

// the union of every rank's sample, in rank order (= ascending class order)
const union: number[] = [];
for (let r = 0; r < world.size; r++) {
  const [start, rows] = split(r);
  for (const c of sampleClasses(rows, labels, -100, start, sample)) union.push(c + start);
}
const position = new Map(union.map((c, k) => [c, k]));
const [start, rows] = split(world.rank);

for (const backend of (process.argv[2] ?? 'js').split(',') as BackendName[]) {
  setBackend(backend);
  for (const reduction of ['mean', 'sum'] as const) {
    const tag = `${backend} ${reduction}`;
    try {
      const Wu: Tensor = tensor(Float32Array.from(union.flatMap((c) => Array.from(W.subarray(c * D, (c + 1) * D)))), [union.length, D]);
      const want = linearCrossEntropy(tensor(E, [N, D]), Wu, Int32Array.from(labels, (t) => (t === -100 ? t : position.get(t)!)),
        { reduction, bias: Float32Array.from(union, (c) => bias[c]!), filterEps: 0 });
      const got = linearCrossEntropy(tensor(E, [N, D]), tensor(W.slice(start * D, (start + rows) * D), [rows, D]), labels, {
        reduction, bias: bias.slice(start, start + rows), filterEps: 0, classSample: sample,
        vocabParallel: { communicator: world, vocabStart: start, vocabSize: V },
      });
      const mine = Array.from(got.sampledClasses!);
      close(`${tag} sampledClasses`, mine, union.filter((c) => c >= start && c < start + rows), 0);
      close(`${tag} loss`, [got.loss as number], [want.loss as number], 1e-5);
      close(`${tag} dEmbeddings`, got.dEmbeddings!.data as Float32Array, want.dEmbeddings!.data as Float32Array, 1e-5);
      const wantRows = mine.flatMap((c) => Array.from((want.dClassifier!.data as Float32Array).subarray(position.get(c)! * D, (position.get(c)! + 1) * D)));
      close(`${tag} dClassifier rows`, got.dClassifier!.data as Float32Array, wantRows, 1e-5);
      close(`${tag} dBias`, got.dBias!, mine.map((c) => want.dBias![position.get(c)!]!), 1e-5);
    } catch (e) {
      failures.push(`${tag}: threw ${e instanceof Error ? e.stack : String(e)}`);
    }
  }
}

console.log(`RESULT ${JSON.stringify({ rank: world.rank, size: world.size, checks, failures: failures.slice(0, 20), failed: failures.length })}`);
process.exitCode = failures.length === 0 ? 0 : 1;
