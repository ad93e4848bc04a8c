// S2 (linearCrossEntropy fwd+bwd, N 2048, D 512, V 32000, f32) on the cpu backend in one
// process, then with the classifier split by vocabulary over K MPI processes (vocabParallel),
// and with the batch split over them (dataParallel); the collectives are counted by wrapping the
// communicator, so the bytes moved per step are measured, not assumed. Then, on paper, the same
// collectives for the Cut Cross-Entropy paper's head over 8 GPUs.
//   npm run bench:scaleout [-- --ranks 2 --runs 5]
// Each rank is given cores / K threads, so one process and K processes use the same cores.
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { linearCrossEntropy, setBackend, setThreads, tensor, type Communicator } from '../lib/index.js';
import { caseInputs, caseMatrix } from '../lib/bench/cases.js';
import { median } from '../lib/bench/measure.js';

interface RankReport {
  mode: 'single' | 'vocab' | 'data';
  ranks: number;
  threads: number;
  msMedian: number;
  msMin: number;
  msMax: number;
  loss: number;
  collectivesPerStep: number;
  bytesPerStep: number;
}

const args = process.argv.slice(2);
const flag = (name: string, dflt: number) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const runs = flag('runs', 5);
const S2 = caseMatrix({ gpu: false, tiny: args.includes('--tiny'), quick: false }).find((c) => c.name === 'S2')!;

/** Times `runs` calls after one warm-up; the communicator's traffic is counted for one call. */
function timeCalls(call: () => number, counter: { calls: number; bytes: number } | null) {
  call();
  if (counter !== null) counter.calls = counter.bytes = 0;
  const loss = call();
  const perStep = counter === null ? { calls: 0, bytes: 0 } : { ...counter };
  const times: number[] = [];
  for (let r = 0; r < runs; r++) {
    const t0 = performance.now();
    call();
    times.push(performance.now() - t0);
  }
  return { msMedian: median(times), msMin: Math.min(...times), msMax: Math.max(...times), loss, perStep };
}

async function rank(mode: 'vocab' | 'data'): Promise<void> {
  const { mpiWorld } = await import('../lib/mpi/index.js');
  const world = mpiWorld();
  const counter = { calls: 0, bytes: 0 };
  const counted: Communicator = {
    rank: world.rank,
    size: world.size,
    allReduce(data, op) {
      counter.calls++;
      counter.bytes += data.byteLength;
      world.allReduce(data, op);
    },
  };
  const threads = Math.max(1, Math.floor(os.availableParallelism() / world.size));
  setBackend('cpu');
  setThreads(threads);
  const { E, W, labels } = caseInputs(S2);
  const { N, D, V } = S2;
  let call: () => number;
  if (mode === 'vocab') {
    const v0 = Math.floor((V * world.rank) / world.size);
    const v1 = Math.floor((V * (world.rank + 1)) / world.size);
    const Wl = tensor((W as Float32Array).slice(v0 * D, v1 * D), [v1 - v0, D]);
    const Et = tensor(E as Float32Array, [N, D]);
    call = () => linearCrossEntropy(Et, Wl, labels, { vocabParallel: { communicator: counted, vocabStart: v0, vocabSize: V } }).loss;
  } else {
    const r0 = Math.floor((N * world.rank) / world.size);
    const r1 = Math.floor((N * (world.rank + 1)) / world.size);
    const El = tensor((E as Float32Array).slice(r0 * D, r1 * D), [r1 - r0, D]);
    const Wt = tensor(W as Float32Array, [V, D]);
    const ll = labels.slice(r0, r1);
    call = () => linearCrossEntropy(El, Wt, ll, { dataParallel: { communicator: counted } }).loss;
  }
  const t = timeCalls(call, counter);
  // every rank waits for the slowest: its time is the step's time
  const slowest = new Float64Array([t.msMedian]);
  world.allReduce(slowest, 'max');
  if (world.rank === 0) {
    const report: RankReport = {
      mode, ranks: world.size, threads, msMedian: slowest[0]!, msMin: t.msMin, msMax: t.msMax, loss: t.loss,
      collectivesPerStep: t.perStep.calls, bytesPerStep: t.perStep.bytes,
    };
    console.log(`@@RESULT ${JSON.stringify(report)}`);
  }
}

function single(): RankReport {
  setBackend('cpu');
  const threads = os.availableParallelism();
  setThreads(threads);
  const { E, W, labels } = caseInputs(S2);
  const Et = tensor(E as Float32Array, [S2.N, S2.D]);
  const Wt = tensor(W as Float32Array, [S2.V, S2.D]);
  const t = timeCalls(() => linearCrossEntropy(Et, Wt, labels).loss, null);
  return { mode: 'single', ranks: 1, threads, msMedian: t.msMedian, msMin: t.msMin, msMax: t.msMax, loss: t.loss, collectivesPerStep: 0, bytesPerStep: 0 };
}

function underMpirun(mode: 'vocab' | 'data', ranks: number): RankReport | string {
  const self = fileURLToPath(import.meta.url);
  const tsx = fileURLToPath(new URL('../node_modules/.bin/tsx', import.meta.url));
  const r = spawnSync('mpirun', ['--allow-run-as-root', '--oversubscribe', '-np', String(ranks), tsx, self, '--rank', mode, ...args],
    { encoding: 'utf8', timeout: 600_000 });
  const line = (r.stdout ?? '').split('\n').find((l) => l.startsWith('@@RESULT '));
  if (line === undefined) return `mpirun failed: ${(r.error?.message ?? r.stderr ?? '').trim().split('\n').slice(-3).join(' ')}`;
  return JSON.parse(line.slice('@@RESULT '.length)) as RankReport;
}

/**
 * The paper's head (N 8192, D 2304, V 256000) over 8 GPUs: the collectives vocabParallel makes
 * (two of O(N) for the row statistics, one of N·D fp32 for dE) as a ring all-reduce,
 * 2·(k − 1)/k of the bytes over each GPU's link. A model, not a measurement.
 */
function paperModel(bytesPerRow: number) {
  const N = 8192, D = 2304, k = 8;
  const bytes = N * bytesPerRow + N * D * 4;
  const links = [
    { name: 'A100 SXM, NVLink 3 (300 GB/s per direction)', bw: 300e9 },
    { name: 'H100 SXM, NVLink 4 (450 GB/s per direction)', bw: 450e9 },
    { name: 'PCIe 4 x16 (25 GB/s)', bw: 25e9 },
  ];
  return { bytes, rows: links.map((l) => ({ link: l.name, ms: ((2 * (k - 1)) / k) * bytes / l.bw * 1e3 })) };
}

async function main(): Promise<void> {
  const rankAt = args.indexOf('--rank');
  if (rankAt >= 0) return rank(args[rankAt + 1] as 'vocab' | 'data');
  const ranks = flag('ranks', 2);
  console.log(`S2 on cpu: N ${S2.N}, D ${S2.D}, V ${S2.V}, f32; median of ${runs} after a warm-up; ${os.availableParallelism()} cores`);
  const rows: (RankReport | string)[] = [single(), underMpirun('vocab', ranks), underMpirun('data', ranks)];
  const base = rows[0] as RankReport;
  console.log('\n| mode | processes × threads | time (median, min–max) | vs one process | collectives / step | bytes all-reduced / step / rank | loss |');
  console.log('|---|---|---|---|---|---|---|');
  const labels = { single: 'one process', vocab: 'vocabParallel', data: 'dataParallel' };
  let vocabBytesPerRow = 0;
  for (const [i, r] of rows.entries()) {
    if (typeof r === 'string') {
      console.log(`| ${['one process', 'vocabParallel', 'dataParallel'][i]} | — | ${r} | | | | |`);
      continue;
    }
    if (r.mode === 'vocab') vocabBytesPerRow = (r.bytesPerStep - S2.N * S2.D * 4) / S2.N;
    console.log(`| ${labels[r.mode]} | ${r.ranks} × ${r.threads} | ${r.msMedian.toFixed(0)} ms (${r.msMin.toFixed(0)}–${r.msMax.toFixed(0)}) | ` +
      `${(r.msMedian / base.msMedian).toFixed(2)} | ${r.collectivesPerStep} | ${(r.bytesPerStep / 1024).toFixed(1)} KiB | ${r.loss.toFixed(6)} |`);
  }
  if (vocabBytesPerRow > 0) {
    const m = paperModel(vocabBytesPerRow);
    console.log(`\nModel, not a measurement: the paper's head (N 8192, D 2304, V 256000) with vocabParallel over 8 GPUs moves ` +
      `${(m.bytes / 2 ** 20).toFixed(1)} MiB per rank per step (${vocabBytesPerRow.toFixed(0)} B per row of statistics, as measured above, + dE in fp32); ` +
      'as a ring all-reduce, 2·7/8 of it crosses each link:');
    for (const r of m.rows) console.log(`  ${r.link}: ${r.ms.toFixed(2)} ms per step`);
  }
}

await main();
