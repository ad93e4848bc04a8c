// `cutloss bench`: the case matrix on one backend against limits and peers measured in the
// same run, each contestant in a process of its own (worker.ts, peers/torch_peer.py), with
// nvidia-smi sampled beside every device timing. Writes bench.md, bench.json and the charts.

import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import * as lib from '../index.js';
import { packageInfo } from '../native-loader.cjs';
import { caseMatrix, materializedBytes, type BenchCase } from './cases.js';
import { renderCharts } from './charts.js';
import { gpuPeak, peakFor } from './peaks.js';
import { markdownReport, type BenchReport, type CaseReport, type ResultRow } from './report.js';
import { queryGpuFacts, runSmi, smiNumber, SmiSampler, summarizeWindow, visibleGpuIndex, type SmiSample } from './smi.js';
import { benchProbe, type Contestant, type PairedResult, type RunBackend, type WorkerResult, type WorkerSpec } from './protocol.js';
import { loopTable, type LoopResult } from './loop.js';
import { LOSS_GROUPS, lossesTable, type LossesResult } from './losses.js';
import { BF16_GROUPS, bf16Table, type Bf16Result } from './bf16.js';

export interface BenchOptions {
  /** Default: cuda when available, else cpu, else js. */
  backend?: RunBackend;
  /** Case names (S1, S2, S2-peaked, S3, CCE, sweep-V8k, …) or 'sweep'; default all. */
  cases?: string[];
  quick: boolean;
  /** Tiny shapes (default on cuda-emu). */
  tiny?: boolean;
  json: boolean;
  outDir: string;
  /** Stop starting new contestants after this many seconds; the rest are listed as skipped. */
  budgetSeconds?: number;
  runs?: number;
  threads?: number;
  peers: boolean;
  /** Device backends: the energy window per contestant, ms. */
  energyWindowMs?: number;
  /** Write progress to stderr. */
  progress: boolean;
}

export const CASE_GROUPS = ['S1', 'S1-loop', 'S2', 'S2-peaked', 'S3', 'CCE', 'sweep', ...LOSS_GROUPS, ...BF16_GROUPS];

interface Job {
  case: BenchCase;
  contestant: Contestant | 'torch' | 'torch-chunked' | 'cce' | 'liger';
  label: string;
  spec: WorkerSpec;
  python?: boolean;
}

interface PythonPeers {
  python: string | null;
  torch: string | null;
  cuda: boolean;
  cce: string | null;
  liger: string | null;
  reasons: Record<string, string>;
}

const MiB = 2 ** 20;
const GiB = 2 ** 30;


function installed(name: string, root: string): boolean {
  for (const base of [process.cwd(), root]) {
    try {
      createRequire(`${base}/`).resolve(name);
      return true;
    } catch {
      // try the next
    }
  }
  return false;
}

/** The first Python that imports torch (CUTLOSS_BENCH_PYTHON, python3 on PATH, /usr/bin/python3), with what it has. */
function probePython(script: string): PythonPeers {
  const tried: string[] = [];
  const candidates = [process.env.CUTLOSS_BENCH_PYTHON, 'python3', '/usr/bin/python3'].filter((p): p is string => !!p);
  let fallback: PythonPeers | null = null;
  for (const py of [...new Set(candidates)]) {
    const r = spawnSync(py, [script, 'probe'], { encoding: 'utf8', timeout: 120_000 });
    if (r.status !== 0) {
      tried.push(`${py}: ${r.error?.message ?? (r.stderr.trim().split('\n').pop() || `exit ${r.status}`)}`);
      continue;
    }
    const p = JSON.parse(r.stdout.trim().split('\n').pop()!) as Omit<PythonPeers, 'python'> & { python: string };
    const found = { ...p, python: py };
    if (p.torch !== null) return found;
    tried.push(`${py}: ${p.reasons.torch ?? 'no torch'}`);
    fallback ??= found;
  }
  return {
    python: null, torch: null, cuda: false, cce: null, liger: null,
    reasons: { torch: `no Python with torch (${tried.join('; ')})`, ...(fallback?.reasons ?? {}) },
  };
}

/** The worker's command: the .ts source under tsx in a checkout, the compiled .js in an installed package. */
function workerArgs(root: string): string[] {
  const fromSource = /\.[cm]?ts$/.test(process.argv[1] ?? '');
  const file = fromSource ? path.join(root, 'lib', 'bench', 'worker.ts') : path.join(root, 'dist', 'esm', 'bench', 'worker.js');
  return ['--expose-gc', ...(fromSource ? ['--import', 'tsx'] : []), file];
}

function peerBlasEnvironment(threads: number): NodeJS.ProcessEnv {
  let flags = '';
  try {
    flags = readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    // not Linux
  }
  const avx512 = ['avx512f', 'avx512bw', 'avx512dq', 'avx512vl'].every((f) => new RegExp(`\\b${f}\\b`).test(flags));
  return {
    ...process.env, OPENBLAS_NUM_THREADS: String(threads), OMP_NUM_THREADS: String(threads),
    ...(avx512 ? { OPENBLAS_CORETYPE: 'SkylakeX' } : {}),
  };
}

function cpuModel(): string {
  try {
    return /^model name\s*:\s*(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim() ?? os.cpus()[0]?.model ?? 'unknown';
  } catch {
    return os.cpus()[0]?.model ?? 'unknown';
  }
}

class Progress {
  private done = 0;
  private readonly t0 = performance.now();
  constructor(private total: number, private readonly on: boolean) {}
  setTotal(n: number): void {
    this.total = n;
  }
  step(what: string): void {
    if (!this.on) return;
    const width = 24;
    const filled = Math.round((width * this.done) / Math.max(1, this.total));
    const s = Math.round((performance.now() - this.t0) / 1000);
    const line = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${this.done}/${this.total} ${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s  ${what}`;
    if (process.stderr.isTTY) process.stderr.write(`\r\x1b[K${line}`);
    else process.stderr.write(`${line}\n`);
  }
  advance(): void {
    this.done++;
  }
  end(): void {
    if (this.on && process.stderr.isTTY) process.stderr.write('\n');
  }
}

/** Runs a child to its `@@<tag> ` line; rejects with its last words. */
function runChild(cmd: string, args: string[], opts: { cwd: string; env?: NodeJS.ProcessEnv; timeoutMs: number; tag: string }): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { err += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const line = out.split('\n').find((l) => l.startsWith(`@@${opts.tag} `));
      if (code === 0 && line !== undefined) return resolve(line.slice(opts.tag.length + 3));
      const last = err.trim().split('\n').filter((l) => l.trim() !== '').slice(-3).join(' / ');
      reject(new Error(signal === 'SIGKILL' ? `killed after ${Math.round(opts.timeoutMs / 1000)} s (time budget)` : `exit ${code}${last ? `: ${last}` : ''}`));
    });
  });
}

export async function runBench(o: BenchOptions): Promise<BenchReport> {
  const started = performance.now();
  const root = packageInfo().root;
  if (root === null) throw new Error('cannot find the cutloss package root');
  const available = lib.backends();
  const backend: RunBackend = o.backend
    ?? (['cuda', 'cpu', 'js'] as const).find((b) => available.find((x) => x.name === b)?.available)!;
  const info = available.find((b) => b.name === backend)!;
  if (!info.available) throw new Error(`backend ${backend} is unavailable: ${info.reason}`);
  const device = backend === 'cuda' || backend === 'cuda-emu';
  const tiny = o.tiny ?? backend === 'cuda-emu';
  const threads = o.threads ?? os.availableParallelism();
  const runs = o.runs ?? (o.quick ? 2 : 5);
  const energyWindowMs = !device ? 0 : o.energyWindowMs ?? (tiny ? 200 : o.quick ? 1000 : 3000);
  mkdirSync(o.outDir, { recursive: true });

  // The GPU first: its facts head the report; nvidia-smi's absence is a reason, not an error.
  const gpu = await queryGpuFacts();
  const gpuIndex = visibleGpuIndex();
  const cudaStatus = lib.backends().find((b) => b.name === 'cuda');
  const gpuName = gpu.gpus.find((g) => g.index === gpuIndex)?.name ?? gpu.gpus[0]?.name ?? null;
  const peak = gpuPeak(gpuName);
  const sampleSmi = device && gpu.found;

  // Cases
  const all = caseMatrix({ gpu: device, tiny, quick: o.quick });
  const wanted = o.cases ?? CASE_GROUPS;
  const cases = all.filter((c) => wanted.includes(c.name) || (c.sweep && wanted.includes('sweep')));

  // Peers
  const missing: { peer: string; reason: string }[] = [];
  const script = path.join(root, 'lib', 'bench', 'peers', 'torch_peer.py');
  // Importing torch takes seconds: not asked where no Python peer could run (the emulator).
  const noPython = (why: string): PythonPeers => ({ python: null, torch: null, cuda: false, cce: null, liger: null, reasons: { torch: why } });
  const py: PythonPeers = !o.peers ? noPython('--no-peers') : backend === 'cuda-emu' ? noPython('not asked on cuda-emu') : probePython(script);
  const tfjsOk = o.peers && installed('@tensorflow/tfjs', root);
  const wasmOk = o.peers && installed('@tensorflow/tfjs-backend-wasm', root);
  const ortOk = o.peers && installed('onnxruntime-node', root);
  if (!o.peers) missing.push({ peer: 'all peers', reason: '--no-peers' });
  else {
    if (backend === 'cuda-emu') {
      missing.push({ peer: 'PyTorch, Cut Cross-Entropy, Liger', reason: 'GPU peers run on a real GPU only; this run is on cuda-emu' });
    } else if (device) {
      if (py.torch === null) missing.push({ peer: 'PyTorch', reason: py.reasons.torch ?? 'not importable' });
      else if (!py.cuda) missing.push({ peer: 'PyTorch (GPU)', reason: py.reasons.cuda ?? 'no CUDA in torch' });
      if (py.cce === null) missing.push({ peer: 'Cut Cross-Entropy', reason: py.reasons.cce ?? 'not importable' });
      if (py.liger === null) missing.push({ peer: 'Liger', reason: py.reasons.liger ?? 'not importable' });
    } else {
      if (py.torch === null) missing.push({ peer: 'PyTorch', reason: py.reasons.torch ?? 'not importable' });
      if (!tfjsOk) missing.push({ peer: 'TensorFlow.js', reason: '@tensorflow/tfjs is not installed (npm i @tensorflow/tfjs)' });
      if (!wasmOk) missing.push({ peer: 'TensorFlow.js wasm', reason: '@tensorflow/tfjs-backend-wasm is not installed' });
      if (!ortOk) missing.push({ peer: 'onnxruntime-node', reason: 'not installed (ONNXRUNTIME_NODE_INSTALL=skip npm i --no-save onnxruntime-node)' });
    }
  }
  const gpuPeers = backend === 'cuda' && py.torch !== null && py.cuda;

  // Memory the contestants may use: the device's free memory, or the host's.
  // On cuda, asked of nvidia-smi: cudaMemGetInfo here would hold a CUDA context (hundreds of
  // MiB of the device) in this process for the whole run.
  let freeBytes = os.freemem();
  if (backend === 'cuda-emu') freeBytes = benchProbe().deviceMemory(0).freeBytes;
  else if (backend === 'cuda') {
    const r = await runSmi(['-i', String(gpuIndex), '--query-gpu=memory.free', '--format=csv,noheader,nounits']);
    const mib = r.ok ? smiNumber(r.stdout.split('\n')[0]) : null;
    const total = Number(info.details.totalMemory);
    freeBytes = mib !== null ? mib * MiB : Number.isFinite(total) && total > 0 ? total : Infinity;
  }
  const fits = (bytes: number) => bytes <= 0.8 * freeBytes;
  const gib = (b: number) => `${(b / GiB).toFixed(1)} GiB`;

  // The bandwidth limit's loop, built once.
  let streamExe: string | null = null;
  let streamReason: string | null = null;
  const needStream = backend === 'cpu' && cases.some((c) => c.kind !== 'linear');
  if (needStream) {
    // outside the output folder, which may be committed; rebuilt when the source is newer
    const src = path.join(root, 'lib', 'bench', 'stream.cc');
    const exe = path.join(os.tmpdir(), `cutloss-bench-stream-${process.getuid?.() ?? 0}`);
    const fresh = existsSync(exe) && statSync(exe).mtimeMs >= statSync(src).mtimeMs;
    const r = fresh ? { status: 0, stderr: '' } : spawnSync('g++', ['-O3', '-march=native', '-fopenmp', src, '-o', exe], { encoding: 'utf8' });
    if (r.status === 0) streamExe = exe;
    else streamReason = `the bandwidth limit needs g++ with OpenMP (${String(r.stderr || 'g++ failed').trim().split('\n')[0]})`;
  }

  // The plan: every job of every case, with the ones left out and why.
  const plan: { c: BenchCase; jobs: Job[]; skipped: { contestant: string; reason: string }[]; paired: WorkerSpec[] }[] = [];
  for (const c of cases) {
    const jobs: Job[] = [];
    const skipped: { contestant: string; reason: string }[] = [];
    const paired: WorkerSpec[] = [];
    const base = { case: c, backend, runs, threads, energyWindowMs, smi: sampleSmi } as const;
    const add = (contestant: Job['contestant'], label: string, rows: number, extra: Partial<WorkerSpec> = {}, python = false) => {
      jobs.push({ case: c, contestant, label, python, spec: { ...base, contestant: contestant as Contestant, rows, ...extra } });
    };
    const fixed = !c.sweep && c.name !== 'CCE';
    // The slow ones run a slice of the rows and are scaled up (their result says so).
    const cpuRows = backend === 'js' ? Math.min(c.N, c.kind === 'linear' ? 64 : 256)
      : backend === 'cpu' && c.name === 'CCE' && !tiny ? (o.quick ? 256 : 512) : c.N;
    add('cutloss', `cutloss ${backend}`, device ? c.N : cpuRows, backend === 'js' ? { runs: 1 } : {});
    if (backend === 'cpu') {
      if (c.name === 'S2' && !o.quick) for (const mib of [16, 32, 64]) add('cutloss', `cutloss cpu, workspace ${mib} MiB`, c.N, { workspaceBytes: mib * MiB });
      if (c.kind === 'linear') {
        add('gemm-limit', 'GEMM limit', cpuRows);
        if (fits(materializedBytes({ ...c, N: cpuRows, dtype: 'f32' }))) add('materialized', 'materialized', cpuRows);
        else skipped.push({ contestant: 'materialized', reason: `needs ~${gib(materializedBytes({ ...c, N: cpuRows, dtype: 'f32' }))}, ${gib(freeBytes)} free` });
        if (c.name === 'S2') paired.push({ ...base, contestant: 'paired-gemm-limit', rows: c.N, runs: Math.max(runs, 7) });
      } else if (streamExe !== null) {
        paired.push({ ...base, contestant: 'paired-stream-limit', rows: c.N, runs: Math.max(runs, 7), streamExe });
      } else skipped.push({ contestant: 'bandwidth limit', reason: streamReason ?? 'not built' });
      if (fixed) add('cutloss-js', 'cutloss js', c.kind === 'linear' ? Math.min(c.N, 64) : Math.min(c.N, 256), { runs: 1 });
    }
    if (device && c.kind === 'linear') {
      if (fits(materializedBytes(c))) add('materialized', 'materialized', c.N);
      else skipped.push({ contestant: 'materialized', reason: `needs ~${gib(materializedBytes(c))} of device memory, ${gib(freeBytes)} free` });
    }
    if (o.peers && py.torch !== null && (!device || gpuPeers)) {
      const rows = device ? c.N : cpuRows;
      // torch's materialized head: logits, their fp32 copy and gradient (and the bf16 gradient)
      const need = rows * c.V * (c.dtype === 'bf16' && device ? 12 : 8);
      const env = { threads };
      if (fits(need)) add('torch', `PyTorch (${device ? 'cuda' : 'cpu'})`, rows, env, true);
      else skipped.push({ contestant: 'PyTorch', reason: `needs ~${gib(need)}, ${gib(freeBytes)} free` });
      if (device && c.kind === 'linear') {
        add('torch-chunked', 'PyTorch, chunked (cuda)', rows, env, true);
        if (py.cce !== null) add('cce', 'Cut Cross-Entropy', rows, env, true);
        if (py.liger !== null) add('liger', 'Liger', rows, env, true);
      }
    }
    if (!device && fixed) {
      if (tfjsOk) add('tfjs-cpu', 'TensorFlow.js cpu', c.kind === 'linear' ? Math.min(c.N, 32) : Math.min(c.N, 256), { runs: 1 });
      if (wasmOk) add('tfjs-wasm', 'TensorFlow.js wasm', c.kind === 'linear' ? Math.min(c.N, 32) : Math.min(c.N, 256), { runs: 1 });
      if (ortOk && (c.kind === 'softmax' || c.name === 'S2')) add('onnxruntime', 'onnxruntime-node', c.N);
    }
    plan.push({ c, jobs, skipped, paired });
  }

  const total = plan.reduce((n, p) => n + p.jobs.length + p.paired.length, 0);
  const progress = new Progress(total, o.progress);
  const budgetMs = o.budgetSeconds === undefined ? Infinity : o.budgetSeconds * 1000;
  const left = () => budgetMs - (performance.now() - started);
  const reports: CaseReport[] = [];
  const node = workerArgs(root);

  for (const p of plan) {
    const rows: ResultRow[] = [];
    const skipped = [...p.skipped];
    const pairedResults: PairedResult[] = [];
    for (const job of p.jobs) {
      progress.step(`${p.c.name} · ${job.label}`);
      if (left() <= 0) {
        skipped.push({ contestant: job.label, reason: `time budget (${o.budgetSeconds} s) spent` });
        progress.advance();
        continue;
      }
      const sampler = sampleSmi && (job.python !== true || gpuPeers) ? new SmiSampler(gpuIndex) : null;
      sampler?.start();
      let result: WorkerResult | null = null;
      let samples: SmiSample[] = [];
      let samplerError: string | null = null;
      try {
        const timeoutMs = Math.min(left(), 2 ** 31 - 1);
        if (job.python === true) {
          const spec = { case: p.c, variant: job.contestant, device: device ? 'cuda' : 'cpu', rows: job.spec.rows, runs, threads, energyWindowMs, smi: sampleSmi, gpu: gpuIndex };
          const line = await runChild(py.python!, [script, JSON.stringify(spec)], { cwd: root, env: peerBlasEnvironment(threads), timeoutMs, tag: 'RESULT' });
          result = JSON.parse(line) as WorkerResult;
        } else {
          const line = await runChild(process.execPath, [...node, JSON.stringify(job.spec)], { cwd: root, timeoutMs, tag: 'RESULT' });
          result = JSON.parse(line) as WorkerResult;
        }
      } catch (e) {
        skipped.push({ contestant: job.label, reason: `failed: ${(e as Error).message}` });
      }
      if (sampler !== null) ({ samples, error: samplerError } = await sampler.stop());
      if (result !== null) {
        const energy = result.window !== null && sampleSmi ? summarizeWindow({
          windowStartMs: result.window.startMs, windowMs: result.window.windowMs, tokens: result.window.tokens, samples,
          counterBeforeMJ: result.window.counterBeforeMJ, counterAfterMJ: result.window.counterAfterMJ,
          memoryBeforeMiB: result.window.memoryBeforeMiB,
        }) : null;
        if (energy !== null && samplerError !== null) energy.notes.push(samplerError);
        if (energy !== null && result.window?.counterNote) energy.notes.push(result.window.counterNote);
        rows.push({ ...result, energy });
      }
      progress.advance();
    }
    for (const spec of p.paired) {
      progress.step(`${p.c.name} · cutloss cpu and its limit in turns`);
      if (left() <= 0) {
        skipped.push({ contestant: 'in turns with the limit', reason: `time budget (${o.budgetSeconds} s) spent` });
      } else {
        try {
          pairedResults.push(JSON.parse(await runChild(process.execPath, [...node, JSON.stringify(spec)], { cwd: root, timeoutMs: Math.min(left(), 2 ** 31 - 1), tag: 'PAIRED' })) as PairedResult);
        } catch (e) {
          skipped.push({ contestant: 'in turns with the limit', reason: `failed: ${(e as Error).message}` });
        }
      }
      progress.advance();
    }
    reports.push({ case: p.c, rows, skipped, paired: pairedResults });
  }
  progress.end();

  // S1-loop: one child times the four loops side by side (lib/bench/loop-child.ts)
  let loop: LoopResult | undefined;
  if (wanted.includes('S1-loop')) {
    const fromSource = /\.[cm]?ts$/.test(process.argv[1] ?? '');
    const file = fromSource ? path.join(root, 'lib', 'bench', 'loop-child.ts') : path.join(root, 'dist', 'esm', 'bench', 'loop-child.js');
    const args = ['--expose-gc', ...(fromSource ? ['--import', 'tsx'] : []), file, '--backend', backend, ...(tiny ? ['--tiny'] : [])];
    try {
      loop = JSON.parse(await runChild(process.execPath, args, { cwd: root, timeoutMs: Math.min(Math.max(left(), 1), 2 ** 31 - 1), tag: 'LOOP' })) as LoopResult;
    } catch (e) {
      console.error(`S1-loop: skipped: ${(e as Error).message}`);
    }
  }

  // S2-losses, zscore-sweep: one child times the losses side by side (lib/bench/losses-child.ts)
  let losses: LossesResult | undefined;
  const lossGroups = LOSS_GROUPS.filter((g) => wanted.includes(g));
  if (lossGroups.length > 0) {
    const fromSource = /\.[cm]?ts$/.test(process.argv[1] ?? '');
    const file = fromSource ? path.join(root, 'lib', 'bench', 'losses-child.ts') : path.join(root, 'dist', 'esm', 'bench', 'losses-child.js');
    const args = [...(fromSource ? ['--import', 'tsx'] : []), file, '--backend', backend, '--runs', String(runs), '--groups', lossGroups.join(','),
      ...(tiny ? ['--tiny'] : []), ...(o.quick ? ['--quick'] : [])];
    try {
      losses = JSON.parse(await runChild(process.execPath, args, { cwd: root, timeoutMs: Math.min(Math.max(left(), 1), 2 ** 31 - 1), tag: 'LOSSES' })) as LossesResult;
    } catch (e) {
      console.error(`${lossGroups.join(', ')}: skipped: ${(e as Error).message}`);
    }
  }

  // S2-bf16, S2-peaked-bf16, sweep-bf16 (cpu): one child times them in turns (lib/bench/bf16-child.ts)
  let bf16: Bf16Result | undefined;
  const bf16Groups = BF16_GROUPS.filter((g) => wanted.includes(g));
  if (bf16Groups.length > 0 && backend !== 'cpu') console.error(`${bf16Groups.join(', ')}: skipped: cpu backend only`);
  else if (bf16Groups.length > 0) {
    const fromSource = /\.[cm]?ts$/.test(process.argv[1] ?? '');
    const file = fromSource ? path.join(root, 'lib', 'bench', 'bf16-child.ts') : path.join(root, 'dist', 'esm', 'bench', 'bf16-child.js');
    const args = [...(fromSource ? ['--import', 'tsx'] : []), file, '--runs', String(runs), '--groups', bf16Groups.join(','),
      ...(tiny ? ['--tiny'] : []), ...(o.quick ? ['--quick'] : [])];
    try {
      bf16 = JSON.parse(await runChild(process.execPath, args, { cwd: root, timeoutMs: Math.min(Math.max(left(), 1), 2 ** 31 - 1), tag: 'BF16' })) as Bf16Result;
    } catch (e) {
      console.error(`${bf16Groups.join(', ')}: skipped: ${(e as Error).message}`);
    }
  }

  const git = (a: string[]) => {
    try {
      return execFileSync('git', a, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    } catch {
      return null;
    }
  };
  const report: BenchReport = {
    version: packageInfo().version,
    date: new Date().toISOString(),
    backend,
    backendDetails: info.details,
    settings: { quick: o.quick, tiny, runs, threads, energyWindowMs, budgetSeconds: o.budgetSeconds ?? null, cases: cases.map((c) => c.name) },
    machine: {
      cpu: cpuModel(), cores: os.cpus().length, memoryGiB: +(os.totalmem() / GiB).toFixed(1), node: process.version,
      platform: `${os.platform()} ${os.release()} ${os.arch()}`, gitCommit: git(['rev-parse', '--short', 'HEAD']),
    },
    gpu: {
      ...gpu, sampledIndex: sampleSmi ? gpuIndex : null, peak, cudaRuntime: cudaStatus?.available ? cudaStatus.reason : null,
      peakTflops: peak === null ? null : { bf16: peak.bf16, fp32: peak.fp32 },
    },
    peers: {
      python: py.python, torch: py.torch, torchCuda: py.cuda, cce: py.cce, liger: py.liger,
      tfjs: tfjsOk, tfjsWasm: wasmOk, onnxruntime: ortOk, missing,
    },
    cases: reports,
    ...(loop === undefined ? {} : { loop }),
    ...(losses === undefined ? {} : { losses }),
    ...(bf16 === undefined ? {} : { bf16 }),
    totalSeconds: (performance.now() - started) / 1000,
  };
  for (const r of report.cases) {
    for (const row of r.rows) Object.assign(row, derived(r.case, row, report, peakFor(peak, r.case.dtype)));
  }
  const md = markdownReport(report) + (loop === undefined ? '' : `\n## S1-loop\n\n\`\`\`\n${loopTable(loop)}\n\`\`\`\n`) +
    (losses === undefined ? '' : `\n## ${lossGroups.join(', ')}\n\n\`\`\`\n${lossesTable(losses)}\n\`\`\`\n`) +
    (bf16 === undefined ? '' : `\n## ${bf16Groups.join(', ')}\n\n\`\`\`\n${bf16Table(bf16)}\n\`\`\`\n`);
  writeFileSync(path.join(o.outDir, 'bench.md'), md);
  writeFileSync(path.join(o.outDir, 'bench.json'), `${JSON.stringify(report, null, 2)}\n`);
  const charts = await renderCharts(report, o.outDir);
  report.charts = charts;
  writeFileSync(path.join(o.outDir, 'bench.json'), `${JSON.stringify(report, null, 2)}\n`);
  return report;
}

/** Ratios and rates of one row, from numbers of the same run. */
function derived(c: BenchCase, row: ResultRow, report: BenchReport, peakTflops: number | null): Partial<ResultRow> {
  const cutloss = report.cases.find((x) => x.case.name === c.name)?.rows.find((r) => r.contestant === 'cutloss' && !r.label.includes('workspace'));
  const ms = row.fwdBwd.medianMs;
  const flops = c.kind === 'linear' ? 6 * c.N * c.V * c.D : 0;
  const tflops = flops > 0 && row.contestant !== 'materialized' ? flops / (ms / 1000) / 1e12 : null;
  return {
    tokensPerSecond: c.kind === 'softmax' ? null : c.N / (ms / 1000),
    tflops,
    peakFraction: tflops !== null && peakTflops !== null && (report.backend === 'cuda' || row.clock === 'torch.cuda.Event') ? tflops / peakTflops : null,
    cutlossRatio: cutloss !== undefined && cutloss !== row ? cutloss.fwdBwd.medianMs / ms : null,
  };
}

