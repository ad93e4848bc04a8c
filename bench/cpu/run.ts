// `npm run bench:cpu [-- --quick] [-- --runs=N] [-- --threads=N] [-- --only=S1,S2,...] [-- --no-peers]`
//
// The native cpu backend on four scenarios, against limits and peers measured in the same run
// on this machine (each measurement in a fresh process; bench/cpu/worker.ts and torch_peer.py):
//   S1  crossEntropy forward+backward, logits [4096, 32000]
//   S2  linearCrossEntropy forward+backward, E [2048, 512], W [32000, 512] (workspaces 16, 32, 64 MiB and the default)
//   S2-peaked  S2 with logits of std ≈ 20 (a trained model's spread: denormal gradients)
//   S3  softmax [4096, 32000]
// Limits: the three GEMMs of S2 at full size with the same BLAS (also timed in turns with
// cutloss in one process, whose pairwise ratio a drifting machine speed does not move); for S1
// and S3, a C++ loop that streams the logits as often as the fewest-pass algorithm must (read
// twice, write once).
// Peers, where installed: PyTorch on CPU (Debian python3-torch at /usr/bin/python3), TensorFlow.js
// (cpu, and wasm if @tensorflow/tfjs-backend-wasm is installed), onnxruntime-node (inference only).
// Slow contestants (cutloss js, TensorFlow.js) run a slice of the rows and are scaled up: the
// table says so. Prints a table and the issue's targets, writes bench/out/cpu.json. Timings
// are reported, never asserted.

import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { SCENARIOS, type ScenarioName } from './data.js';
import type { Contestant, CpuWorkerResult, CpuWorkerSpec, PairedResult } from './worker.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const outDir = path.join(root, 'bench', 'out');
const require = createRequire(import.meta.url);

// ---------------------------------------------------------------- command line

const args = process.argv.slice(2);
const flag = (name: string) => args.find((a) => a.startsWith(`--${name}=`))?.split('=')[1];
if (args.includes('--help')) {
  console.log('usage: npm run bench:cpu [-- --quick] [-- --runs=N] [-- --threads=N] [-- --only=S1,S2,S2-peaked,S3] [-- --no-peers]');
  process.exit(0);
}
const quick = args.includes('--quick');
const runs = Number(flag('runs') ?? (quick ? 2 : 5));
const threads = Number(flag('threads') ?? cpuCount());
const only = (flag('only')?.split(',') ?? ['S1', 'S2', 'S2-peaked', 'S3']) as ScenarioName[];
const peers = !args.includes('--no-peers');
const MiB = 2 ** 20;

function cpuCount(): number {
  return typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
}

// ---------------------------------------------------------------- measurements

interface Row {
  scenario: ScenarioName;
  label: string;
  kind: 'cutloss' | 'limit' | 'peer';
  medianMs: number;
  firstMs: number | null;
  /** Peak growth of the first call beyond what it returns, bytes (null: not measured). */
  extraBytes: number | null;
  growthBytes: number | null;
  loss: number | null;
  note: string;
}

const rows: Row[] = [];

function log(msg: string): void {
  process.stderr.write(`${msg}\n`);
}

/** Runs bench/cpu/worker.ts on `spec` in a fresh process; the JSON after its `@@<tag> ` line, or null. */
function workerLine<T>(spec: CpuWorkerSpec, tag: 'RESULT' | 'PAIRED'): T | null {
  const r = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', path.join(here, 'worker.ts'), JSON.stringify(spec)], {
    cwd: root, encoding: 'utf8', maxBuffer: 64 * MiB, stdio: ['ignore', 'pipe', 'inherit'],
  });
  const line = r.stdout?.split('\n').find((l) => l.startsWith(`@@${tag} `));
  if (r.status !== 0 || line === undefined) {
    log(`    failed (status ${r.status}, signal ${r.signal}): skipped`);
    return null;
  }
  return JSON.parse(line.slice(`@@${tag} `.length)) as T;
}

function runNodeWorker(spec: CpuWorkerSpec): CpuWorkerResult | null {
  log(`  ${spec.scenario} ${spec.contestant}${spec.workspaceBytes ? ` (workspace ${spec.workspaceBytes / MiB} MiB)` : ''}, ${spec.rows} rows …`);
  return workerLine<CpuWorkerResult>(spec, 'RESULT');
}

/** Per scenario: cutloss cpu and its limit timed in turns in one process. */
const pairedRuns: Partial<Record<ScenarioName, PairedResult>> = {};

/** cutloss cpu and a limit in turns in one process (worker.ts `paired`). */
function runPaired(spec: CpuWorkerSpec): PairedResult | null {
  log(`  ${spec.scenario} cutloss cpu and the ${spec.contestant === 'paired-gemm-limit' ? 'GEMM' : 'bandwidth'} limit in turns, ${spec.runs} pairs …`);
  const p = workerLine<PairedResult>(spec, 'PAIRED');
  if (p === null) return null;
  log(`    medians ${p.mediansMs.map((m) => m.toFixed(0)).join(' ms / ')} ms, ratio ${p.ratio.toFixed(3)}`);
  return p;
}

function add(scenario: ScenarioName, kind: Row['kind'], res: CpuWorkerResult | null): void {
  if (res === null) return;
  const growth = res.memory.source === 'VmHWM' ? res.memory.growthBytes : null;
  rows.push({
    scenario, kind, label: res.label, medianMs: res.medianMs, firstMs: res.firstMs, loss: res.loss, note: res.note,
    growthBytes: res.scale === 1 ? growth : null,
    extraBytes: res.scale === 1 && growth !== null ? growth - res.returnedBytes : null,
  });
  log(`    median ${res.medianMs.toFixed(0)} ms, first ${res.firstMs.toFixed(0)} ms`);
}

/** Which optional peers are installed. */
function installed(name: string): boolean {
  try {
    require.resolve(name, { paths: [root] });
    return true;
  } catch {
    return false;
  }
}

function torchAvailable(): string | null {
  const python = '/usr/bin/python3';
  if (!existsSync(python)) return null;
  const r = spawnSync(python, ['-c', 'import torch, numpy'], { encoding: 'utf8' });
  return r.status === 0 ? python : null;
}

/** OpenBLAS's AVX-512 kernels for the peer too, where the CPU has them (as cutloss picks its own). */
function peerBlasEnvironment(): NodeJS.ProcessEnv {
  const flags = existsSync('/proc/cpuinfo') ? execFileSync('cat', ['/proc/cpuinfo'], { encoding: 'utf8' }) : '';
  const avx512 = ['avx512f', 'avx512bw', 'avx512dq', 'avx512vl'].every((f) => new RegExp(`\\b${f}\\b`).test(flags));
  return {
    ...process.env,
    OPENBLAS_NUM_THREADS: String(threads),
    OMP_NUM_THREADS: String(threads),
    ...(avx512 ? { OPENBLAS_CORETYPE: 'SkylakeX' } : {}),
  };
}

function runTorch(python: string, scenario: ScenarioName): void {
  log(`  ${scenario} PyTorch …`);
  const spec = { scenario, runs, threads };
  const r = spawnSync(python, [path.join(here, 'torch_peer.py'), JSON.stringify(spec)], {
    encoding: 'utf8', env: peerBlasEnvironment(), maxBuffer: 16 * MiB, stdio: ['ignore', 'pipe', 'inherit'],
  });
  const line = r.stdout?.split('\n').find((l) => l.startsWith('@@RESULT '));
  if (r.status !== 0 || line === undefined) {
    log(`    failed (status ${r.status}): skipped`);
    return;
  }
  const t = JSON.parse(line.slice('@@RESULT '.length)) as {
    medianMs: number; firstMs: number; growthBytes: number | null; returnedBytes: number; loss: number | null; note: string;
  };
  rows.push({
    scenario, kind: 'peer', label: 'PyTorch', medianMs: t.medianMs, firstMs: t.firstMs, loss: t.loss, note: t.note,
    growthBytes: t.growthBytes, extraBytes: t.growthBytes === null ? null : t.growthBytes - t.returnedBytes,
  });
  log(`    median ${t.medianMs.toFixed(0)} ms, first ${t.firstMs.toFixed(0)} ms`);
}

/** bench/cpu/stream.cc, built once into bench/out; returns the executable (null: no compiler). */
function streamLimit(scenario: ScenarioName): string | null {
  const s = SCENARIOS[scenario];
  const exe = path.join(outDir, 'stream');
  if (!existsSync(exe)) {
    const r = spawnSync('g++', ['-O3', '-march=native', '-fopenmp', path.join(here, 'stream.cc'), '-o', exe], { encoding: 'utf8' });
    if (r.status !== 0) {
      log(`  the bandwidth limit needs g++ with OpenMP: ${r.stderr || r.error}`);
      return null;
    }
  }
  log(`  ${scenario} bandwidth limit …`);
  const out = execFileSync(exe, [String(s.N), String(s.V), String(Math.max(3, runs))], {
    encoding: 'utf8', env: { ...process.env, OMP_NUM_THREADS: String(threads) },
  });
  const m = JSON.parse(out) as { warmMs: number; freshMs: number; gbPerSecond: number };
  const note = `C++ loop, ${threads} threads: read the logits twice, write once (${m.gbPerSecond.toFixed(1)} GB/s)`;
  rows.push({ scenario, kind: 'limit', label: 'bandwidth limit', medianMs: m.warmMs, firstMs: null, extraBytes: null, growthBytes: null, loss: null, note: `${note}, into memory written before` });
  rows.push({ scenario, kind: 'limit', label: 'bandwidth limit, fresh output', medianMs: m.freshMs, firstMs: null, extraBytes: null, growthBytes: null, loss: null, note: `${note}, into a new allocation each time (page faults)` });
  return exe;
}

// ---------------------------------------------------------------- the run

mkdirSync(outDir, { recursive: true });
const python = peers ? torchAvailable() : null;
const wasm = peers && installed('@tensorflow/tfjs-backend-wasm');
const ort = peers && installed('onnxruntime-node');
log(`bench:cpu — ${threads} threads, ${runs} timed runs each, peers: ${[
  python ? 'PyTorch' : null, peers ? 'TensorFlow.js cpu' : null, wasm ? 'TensorFlow.js wasm' : null, ort ? 'onnxruntime-node' : null,
].filter(Boolean).join(', ') || 'none'}`);

const spec = (scenario: ScenarioName, contestant: Contestant, rowsRun: number, extra: Partial<CpuWorkerSpec> = {}): CpuWorkerSpec =>
  ({ scenario, contestant, rows: rowsRun, runs, threads, ...extra });

for (const name of only) {
  const s = SCENARIOS[name];
  log(`${name}: ${s.what}`);
  if (name === 'S2') {
    add(name, 'cutloss', runNodeWorker(spec(name, 'cutloss-cpu', s.N)));
    for (const mib of [16, 32, 64]) add(name, 'cutloss', runNodeWorker(spec(name, 'cutloss-cpu', s.N, { workspaceBytes: mib * MiB })));
    add(name, 'limit', runNodeWorker(spec(name, 'gemm-limit', s.N)));
    const p = runPaired({ ...spec(name, 'paired-gemm-limit', s.N), runs: Math.max(runs, 7) });
    if (p !== null) pairedRuns[name] = p;
  } else {
    add(name, 'cutloss', runNodeWorker(spec(name, 'cutloss-cpu', s.N)));
  }
  if (name === 'S1' || name === 'S3') {
    const exe = streamLimit(name);
    const p = exe === null ? null : runPaired({ ...spec(name, 'paired-stream-limit', s.N), runs: Math.max(runs, 7), streamExe: exe });
    if (p !== null) pairedRuns[name] = p;
  }
  // the reference backend: a slice of the rows, scaled up
  add(name, 'cutloss', runNodeWorker({ ...spec(name, 'cutloss-js', s.D === 0 ? 256 : 64), runs: 1 }));
  if (python !== null) runTorch(python, name);
  if (peers) add(name, 'peer', runNodeWorker({ ...spec(name, 'tfjs-cpu', s.D === 0 ? 256 : 32), runs: 1 }));
  if (wasm) add(name, 'peer', runNodeWorker({ ...spec(name, 'tfjs-wasm', s.D === 0 ? 256 : 32), runs: 1 }));
  if (ort && (name === 'S3' || name === 'S2')) add(name, 'peer', runNodeWorker(spec(name, 'onnxruntime', s.N)));
}

// ---------------------------------------------------------------- report

const fmt = (ms: number) => (ms >= 10_000 ? `${(ms / 1000).toFixed(1)} s` : `${ms.toFixed(0)} ms`);
const mib = (b: number | null) => (b === null ? '—' : `${(b / MiB).toFixed(1)} MiB`);
const cutlossOf = (scenario: ScenarioName) => rows.find((r) => r.scenario === scenario && r.label === 'cutloss cpu');

console.log(`\ncutloss cpu benchmark — ${os.cpus()[0]?.model ?? 'CPU'}, ${threads} threads, medians of ${runs} runs\n`);
console.log('| scenario | contestant | median | first call | peak growth beyond results | cutloss cpu ÷ this | note |');
console.log('|---|---|---|---|---|---|---|');
for (const r of rows) {
  const c = cutlossOf(r.scenario);
  const ratio = c !== undefined && r !== c ? `${(c.medianMs / r.medianMs).toFixed(2)}` : '';
  console.log(`| ${r.scenario} | ${r.label} | ${fmt(r.medianMs)} | ${r.firstMs === null ? '—' : fmt(r.firstMs)} | ${mib(r.extraBytes)} | ${ratio} | ${r.note} |`);
}

if (Object.keys(pairedRuns).length > 0) {
  console.log('\nIn turns in one process (each pair within a second or so):');
  for (const [scenario, p] of Object.entries(pairedRuns)) {
    console.log(`  ${scenario}: ${p.labels[0]} ${fmt(p.mediansMs[0])}, ${p.labels[1]} ${fmt(p.mediansMs[1])}, median of ${p.pairs} pair ratios ${p.ratio.toFixed(2)}`);
  }
}

// The issue's targets, measured here.
interface Target {
  what: string;
  value: number | null;
  limit: string;
  met: boolean | null;
}
const targets: Target[] = [];
const find = (scenario: ScenarioName, label: string) => rows.find((r) => r.scenario === scenario && r.label === label);
const ratioTarget = (what: string, a: Row | undefined, b: Row | undefined, max: number) => {
  const value = a !== undefined && b !== undefined ? a.medianMs / b.medianMs : null;
  targets.push({ what, value, limit: `≤ ${+max.toFixed(2)}`, met: value === null ? null : value <= max });
};
ratioTarget('S2: cutloss cpu ÷ PyTorch', cutlossOf('S2'), find('S2', 'PyTorch'), 0.85);
ratioTarget('S2: cutloss cpu ÷ GEMM limit (separate processes)', cutlossOf('S2'), find('S2', 'GEMM limit (E·Wᵀ, G·W, Gᵀ·E)'), 1.15);
const pairedTarget = (scenario: ScenarioName, limit: string, max: number) => {
  if (!only.includes(scenario)) return;
  const p = pairedRuns[scenario];
  const v = p?.ratio ?? null;
  targets.push({
    what: `${scenario}: cutloss cpu ÷ ${limit} (in turns in one process, median of ${p?.pairs ?? 0} pair ratios)`,
    value: v, limit: `≤ ${max}`, met: v === null ? null : v <= max,
  });
};
pairedTarget('S2', 'GEMM limit', 1.15);
const s2 = cutlossOf('S2');
targets.push({
  what: 'S2: peak growth beyond the returned gradients', value: s2?.extraBytes ?? null, limit: '< 64 MB',
  met: s2?.extraBytes === null || s2 === undefined ? null : s2.extraBytes! < 64e6,
});
ratioTarget('S2-peaked ÷ S2 (cutloss cpu)', cutlossOf('S2-peaked'), cutlossOf('S2'), 1.2);
ratioTarget('S1: cutloss cpu ÷ PyTorch', cutlossOf('S1'), find('S1', 'PyTorch'), 0.5);
ratioTarget('S1: cutloss cpu ÷ bandwidth limit (separate processes)', cutlossOf('S1'), find('S1', 'bandwidth limit'), 1.5);
pairedTarget('S1', 'bandwidth limit', 1.5);
ratioTarget('S3: cutloss cpu ÷ PyTorch', cutlossOf('S3'), find('S3', 'PyTorch'), 1 / 1.5);
console.log('\nTargets (issue 5):');
for (const t of targets) {
  const v = t.value === null ? 'not measured' : t.what.includes('growth') ? mib(t.value) : t.value.toFixed(2);
  console.log(`  ${t.met === null ? '?' : t.met ? 'met    ' : 'NOT met'}  ${t.what}: ${v} (${t.limit})`);
}
for (const scenario of only) {
  const c = cutlossOf(scenario);
  const t = find(scenario, 'PyTorch');
  if (c?.loss != null && t?.loss != null) {
    console.log(`  ${scenario}: loss cutloss ${c.loss.toFixed(6)}, PyTorch ${t.loss.toFixed(6)} (same inputs)`);
  }
}

const file = path.join(outDir, 'cpu.json');
writeFileSync(file, `${JSON.stringify({ date: new Date().toISOString(), cpu: os.cpus()[0]?.model, threads, runs, rows, paired: pairedRuns, targets }, null, 2)}\n`);
console.log(`\nwrote ${path.relative(root, file)}`);
