// `npm run bench [-- --quick] [-- --no-big] [-- --no-tfjs] [-- --seed=N]`
//
// 1. linearCrossEntropy (reference JS backend) against TensorFlow.js (cpu backend) composing
//    matMul + softmaxCrossEntropy with autodiff, on the same data: E [256, 512], W [V, 512],
//    V = 32000 and 8000. Loss and gradients are checked against each other; times are medians
//    of several calls after a full-size warm-up call; peak RSS growth is that of the first
//    full-size call in a fresh process.
// 2. The blockwise memory claim: N = 4096, D = 256, V = 50000 (N·V·4 = 819 MB of logits if
//    they were materialized); forward-only and forward+backward peak growth in fresh
//    processes. Slow in pure JS (minutes); skipped by --quick and --no-big.
// Prints a table and writes bench/out/results.json. Timings are reported, never asserted;
// the exit code is non-zero only if the two implementations disagree or a worker fails.

import { spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync, readSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { linearChart, type ChartGroup } from './chart.js';
import type { WorkerResult, WorkerSpec } from './worker.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');
const outDir = path.join(here, 'out');

// ---------------------------------------------------------------- command line

const args = process.argv.slice(2);
if (args.includes('--help') || args.includes('-h')) {
  console.log(`usage: npm run bench [-- --quick] [-- --no-big] [-- --no-tfjs] [-- --seed=N]
  --quick    one timed call per contestant, and no N=4096/V=50000 run (~2-3 min)
  --no-big   skip the N=4096, D=256, V=50000 blockwise run
  --no-tfjs  skip TensorFlow.js (cutloss only)
  --seed=N   data seed (default 1234)`);
  process.exit(0);
}
const quick = args.includes('--quick');
const runBig = !quick && !args.includes('--no-big');
const runTfjs = !args.includes('--no-tfjs');
const seedArg = args.find((a) => a.startsWith('--seed='));
const seed = seedArg === undefined ? 1234 : Number(seedArg.slice('--seed='.length));
const unknown = args.filter((a) => !['--quick', '--no-big', '--no-tfjs'].includes(a) && !a.startsWith('--seed='));
if (unknown.length > 0 || !Number.isInteger(seed)) {
  console.error(`bench: unknown or bad argument(s): ${unknown.join(' ') || `--seed=${seed}`} (try --help)`);
  process.exit(2);
}

const RUNS_CUTLOSS = quick ? 1 : 3;
const RUNS_TFJS = quick ? 1 : 2;
const RUNS_FWD = quick ? 1 : 3;
const LINEAR = { N: 256, D: 512, vocabs: [32000, 8000] };
const BIG = { N: 4096, D: 256, V: 50000 };
const TARGET_BYTES = 64 * 2 ** 20;

// ---------------------------------------------------------------- helpers

const MiB = (b: number): string => (b / 2 ** 20).toFixed(1);
const sec = (ms: number): string => (ms / 1000).toFixed(2);

function runWorker(spec: WorkerSpec): WorkerResult {
  const t0 = performance.now();
  // Fresh process per contestant: its peak RSS is its own. --expose-gc lets it GC before measuring.
  const r = spawnSync(
    process.execPath,
    ['--expose-gc', '--import', 'tsx', path.join(here, 'worker.ts'), JSON.stringify(spec)],
    { cwd: root, stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8', maxBuffer: 16 * 2 ** 20 },
  );
  if (r.error !== undefined) throw r.error;
  const line = r.stdout.split('\n').find((l) => l.startsWith('@@RESULT '));
  if (r.status !== 0 || line === undefined) {
    throw new Error(`worker ${spec.impl} ${JSON.stringify(spec)} failed (status ${r.status}, signal ${r.signal})`);
  }
  const res = JSON.parse(line.slice('@@RESULT '.length)) as WorkerResult;
  console.log(`    done in ${sec(performance.now() - t0)} s wall`);
  return res;
}

/** Max |a − b| over two raw f32 files, read in chunks (keeps this process's own peak RSS small). */
function compareDumps(fileA: string, fileB: string): { maxAbsDiff: number; count: number } {
  const CHUNK = 1 << 20;
  const fa = openSync(fileA, 'r');
  const fb = openSync(fileB, 'r');
  const ba = new Float32Array(CHUNK / 4);
  const bb = new Float32Array(CHUNK / 4);
  const ua = new Uint8Array(ba.buffer);
  const ub = new Uint8Array(bb.buffer);
  let maxAbsDiff = 0;
  let count = 0;
  try {
    for (;;) {
      const na = readSync(fa, ua, 0, CHUNK, null);
      const nb = readSync(fb, ub, 0, CHUNK, null);
      if (na !== nb) throw new Error(`gradient dumps differ in size: ${fileA}, ${fileB}`);
      if (na === 0) break;
      for (let i = 0; i < na / 4; i++) {
        const d = Math.abs(ba[i]! - bb[i]!);
        if (!(d <= maxAbsDiff)) maxAbsDiff = d; // NaN propagates
      }
      count += na / 4;
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
  return { maxAbsDiff, count };
}

function maxAbsDiff(a: number[], b: number[]): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (!(d <= m)) m = d;
  }
  return m;
}

function machine(): Record<string, unknown> {
  let cpuModel = os.cpus()[0]?.model ?? 'unknown';
  try {
    const m = /^model name\s*:\s*(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m !== null) cpuModel = m[1]!.trim();
  } catch {
    /* not Linux */
  }
  const git = (a: string[]): string => {
    const r = spawnSync('git', a, { cwd: root, encoding: 'utf8' });
    return r.status === 0 ? r.stdout.trim() : '';
  };
  let tfjsVersion = 'not installed';
  try {
    tfjsVersion = (JSON.parse(readFileSync(path.join(root, 'node_modules/@tensorflow/tfjs/package.json'), 'utf8')) as {
      version: string;
    }).version;
  } catch {
    /* keep */
  }
  return {
    cpuModel,
    cores: os.cpus().length,
    availableParallelism: os.availableParallelism(),
    totalMemoryGiB: +(os.totalmem() / 2 ** 30).toFixed(1),
    node: process.version,
    v8: process.versions.v8,
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    tfjs: tfjsVersion,
    gitCommit: git(['rev-parse', '--short', 'HEAD']),
    gitDirty: git(['status', '--porcelain', '--', 'lib']) !== '',
    date: new Date().toISOString(),
  };
}

// ---------------------------------------------------------------- the runs

const started = performance.now();
const info = machine();
console.log(`cutloss bench${quick ? ' (--quick)' : ''}`);
console.log(
  `machine: ${String(info.cpuModel)}, ${String(info.cores)} cores, ${String(info.totalMemoryGiB)} GiB; ` +
    `Node ${String(info.node)}; tfjs ${String(info.tfjs)}; lib at ${String(info.gitCommit)}${info.gitDirty ? ' + uncommitted changes' : ''}`,
);
mkdirSync(outDir, { recursive: true });
const tmpPrefix = path.join(os.tmpdir(), `cutloss-bench-${process.pid}`);

interface LinearEntry {
  V: number;
  cutloss: WorkerResult;
  tfjs: WorkerResult | null;
  /** tfjs median time / cutloss median time. */
  ratio: number | null;
  check: {
    lossAbsDiff: number;
    sampledGradMaxAbsDiff: number;
    fullGradMaxAbsDiff: { dE: number; dW: number };
    gradScale: { dE: number; dW: number };
    agree: boolean;
  } | null;
}

const linear: LinearEntry[] = [];
let failed = false;

for (const V of LINEAR.vocabs) {
  const { N, D } = LINEAR;
  console.log(`\n[linear] N=${N} D=${D} V=${V} (logits would be N·V·4 = ${MiB(N * V * 4)} MiB)`);
  const dump = runTfjs ? `${tmpPrefix}-V${V}` : undefined;
  console.log(`  cutloss: first call + ${RUNS_CUTLOSS} timed fwd+bwd${V === LINEAR.vocabs[0] ? ` + ${RUNS_FWD} forward-only` : ''}`);
  const cut = runWorker({
    impl: 'cutloss', N, D, V, seed, mode: 'fwdbwd', runs: RUNS_CUTLOSS,
    fwdRuns: V === LINEAR.vocabs[0] ? RUNS_FWD : 0,
    dumpGrads: dump === undefined ? undefined : `${dump}-cutloss`,
  });
  let tf: WorkerResult | null = null;
  let check: LinearEntry['check'] = null;
  if (runTfjs) {
    console.log(`  tfjs: first call + ${RUNS_TFJS} timed fwd+bwd`);
    tf = runWorker({ impl: 'tfjs', N, D, V, seed, mode: 'fwdbwd', runs: RUNS_TFJS, dumpGrads: `${dump}-tfjs` });
    const dE = compareDumps(`${dump}-cutloss.dE.f32`, `${dump}-tfjs.dE.f32`);
    const dW = compareDumps(`${dump}-cutloss.dW.f32`, `${dump}-tfjs.dW.f32`);
    for (const who of ['cutloss', 'tfjs']) for (const g of ['dE', 'dW']) rmSync(`${dump}-${who}.${g}.f32`, { force: true });
    const scale = cut.gradMaxAbs ?? { dE: 1, dW: 1 };
    const lossAbsDiff = Math.abs(cut.loss - tf.loss);
    const sampled = Math.max(maxAbsDiff(cut.samples.dE, tf.samples.dE), maxAbsDiff(cut.samples.dW, tf.samples.dW));
    // f32 (tfjs) against f64-accumulated (cutloss) sums over D = 512 and V: generous bounds.
    const agree =
      lossAbsDiff <= 1e-4 * Math.max(1, Math.abs(cut.loss)) &&
      dE.maxAbsDiff <= 1e-3 * scale.dE && dW.maxAbsDiff <= 1e-3 * scale.dW;
    check = {
      lossAbsDiff, sampledGradMaxAbsDiff: sampled,
      fullGradMaxAbsDiff: { dE: dE.maxAbsDiff, dW: dW.maxAbsDiff }, gradScale: scale, agree,
    };
    console.log(
      `  check: loss ${cut.loss.toFixed(6)} vs ${tf.loss.toFixed(6)} (|diff| ${lossAbsDiff.toExponential(2)}); ` +
        `sampled grads max |diff| ${sampled.toExponential(2)}; all of dE ${dE.maxAbsDiff.toExponential(2)} ` +
        `(max |dE| ${scale.dE.toExponential(2)}), all of dW ${dW.maxAbsDiff.toExponential(2)} ` +
        `(max |dW| ${scale.dW.toExponential(2)}) → ${agree ? 'same computation' : 'MISMATCH'}`,
    );
    if (!agree) failed = true;
  }
  linear.push({ V, cutloss: cut, tfjs: tf, ratio: tf === null ? null : tf.medianMs / cut.medianMs, check });
}

interface BigEntry {
  N: number;
  D: number;
  V: number;
  logitsBytes: number;
  forward: WorkerResult;
  forwardBackward: WorkerResult;
  /** Peak growth of fwd+bwd minus the returned gradients (N + V)·D·4. */
  netGrowthBytes: number;
  targetBytes: number;
  forwardUnderTarget: boolean;
  netUnderTarget: boolean;
}

let big: BigEntry | null = null;
if (runBig) {
  const { N, D, V } = BIG;
  console.log(`\n[blockwise] N=${N} D=${D} V=${V} (logits would be N·V·4 = ${MiB(N * V * 4)} MiB)`);
  console.log('  cutloss forward only (computeGrad: false)');
  const fwd = runWorker({ impl: 'cutloss', N, D, V, seed, mode: 'fwd', runs: 0 });
  console.log('  cutloss forward + backward');
  const fb = runWorker({ impl: 'cutloss', N, D, V, seed, mode: 'fwdbwd', runs: 0 });
  const net = fb.memory.growthBytes - fb.returnedBytes;
  big = {
    N, D, V, logitsBytes: N * V * 4, forward: fwd, forwardBackward: fb, netGrowthBytes: net,
    targetBytes: TARGET_BYTES,
    forwardUnderTarget: fwd.memory.growthBytes < TARGET_BYTES,
    netUnderTarget: net < TARGET_BYTES,
  };
}

// ---------------------------------------------------------------- report

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  const line = (r: string[]): string => r.map((cell, c) => (c < 2 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  ');
  return [line(rows[0]!), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.slice(1).map(line)].join('\n');
}

const memNote = (r: WorkerResult): string =>
  r.memory.source === 'VmHWM' && Math.abs(r.memory.maxRssGrowthBytes - r.memory.growthBytes) > 2 ** 20
    ? ` (maxRSS: ${MiB(r.memory.maxRssGrowthBytes)})`
    : '';

console.log(`\n=== results (${LINEAR.N}×${LINEAR.D} embeddings, f32, mean CE, fwd+bwd; median of timed calls) ===`);
const rows: string[][] = [
  ['V', 'impl', 'time s', 'runs', 'fwd-only s', 'peak growth MiB', 'returned dE+dW MiB', 'net of grads MiB', 'N·V·4 MiB'],
];
for (const e of linear) {
  for (const r of [e.cutloss, e.tfjs]) {
    if (r === null) continue;
    rows.push([
      String(e.V), r.spec.impl, sec(r.medianMs), String(r.timesMs.length),
      r.fwdMedianMs === null ? '' : sec(r.fwdMedianMs),
      MiB(r.memory.growthBytes) + memNote(r), MiB(r.returnedBytes), MiB(r.memory.growthBytes - r.returnedBytes),
      MiB(LINEAR.N * e.V * 4),
    ]);
  }
}
console.log(table(rows));
for (const e of linear) {
  if (e.ratio !== null) {
    console.log(`V=${e.V}: tfjs / cutloss time = ${e.ratio.toFixed(2)}×` + (e.check === null ? '' : `; ${e.check.agree ? 'results agree' : 'RESULTS DISAGREE'}`));
  }
}
const mem = linear.map((e) => `V=${e.V}: ${MiB(e.cutloss.memory.growthBytes - e.cutloss.returnedBytes)}`).join(', ');
console.log(`cutloss peak growth net of returned gradients (should not grow with V): ${mem} MiB`);
if (runTfjs) {
  console.log(
    `tfjs peak growth (grows with N·V): ${linear.map((e) => `V=${e.V}: ${MiB(e.tfjs!.memory.growthBytes)}`).join(', ')} MiB`,
  );
}

if (big !== null) {
  const b = big;
  console.log(`\n=== blockwise claim: N=${b.N} D=${b.D} V=${b.V}, N·V·4 = ${MiB(b.logitsBytes)} MiB of logits never formed ===`);
  console.log(table([
    ['call', 'impl', 'time s', 'peak growth MiB', 'returned MiB', 'net MiB', 'target', 'ok'],
    ['forward (computeGrad: false)', 'cutloss', sec(b.forward.memory.ms), MiB(b.forward.memory.growthBytes) + memNote(b.forward),
      '0.0', MiB(b.forward.memory.growthBytes), '< 64 MiB', b.forwardUnderTarget ? 'yes' : 'NO'],
    ['forward + backward', 'cutloss', sec(b.forwardBackward.memory.ms),
      MiB(b.forwardBackward.memory.growthBytes) + memNote(b.forwardBackward), MiB(b.forwardBackward.returnedBytes),
      MiB(b.netGrowthBytes), '< 64 MiB', b.netUnderTarget ? 'yes' : 'NO'],
  ]));
  console.log(`loss ${b.forward.loss.toFixed(6)} (forward) vs ${b.forwardBackward.loss.toFixed(6)} (forward+backward)`);
}

const totalSeconds = (performance.now() - started) / 1000;
console.log(`\nmachine: ${String(info.cpuModel)}, ${String(info.cores)} cores, Node ${String(info.node)}; total ${totalSeconds.toFixed(0)} s`);
console.log('peak growth = VmHWM after − RSS before the call (Linux), first full-size call in a fresh process; see bench/measure.ts');

const results = {
  machine: info,
  settings: {
    quick, seed, runs: { cutloss: RUNS_CUTLOSS, tfjs: RUNS_TFJS, cutlossForwardOnly: RUNS_FWD },
    linear: { N: LINEAR.N, D: LINEAR.D, vocabs: LINEAR.vocabs }, big: runBig ? BIG : null,
    data: 'E ~ N(0, 1), W ~ N(0, 0.05²), labels uniform; mulberry32 seeded',
  },
  linear,
  big,
  totalSeconds,
};
const outFile = path.join(outDir, 'results.json');
writeFileSync(outFile, `${JSON.stringify(results, null, 2)}\n`);
console.log(`wrote ${path.relative(root, outFile)}`);
const chartFile = path.join(outDir, 'chart.svg');
const groups: ChartGroup[] = linear.map((e) => ({
  label: `V = ${e.V}`,
  bars: [e.cutloss, e.tfjs].filter((r): r is WorkerResult => r !== null).map((r) => ({
    name: r.spec.impl, seconds: r.medianMs / 1000, growthMiB: r.memory.growthBytes / 2 ** 20,
  })),
}));
const caption = `linearCrossEntropy E [${LINEAR.N}, ${LINEAR.D}], W [V, ${LINEAR.D}], f32; ${String(info.cpuModel)}, ${String(info.cores)} cores, Node ${String(info.node)}`;
writeFileSync(chartFile, linearChart(groups, caption));
console.log(`wrote ${path.relative(root, chartFile)}`);
if (failed) {
  console.error('bench: cutloss and tfjs disagree; the comparison above is not of the same computation');
  process.exitCode = 1;
}
