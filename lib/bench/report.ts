// The bench report: its JSON shape and the markdown table. Every ratio is between numbers of
// the same run; cases and peers left out are listed with the reason.

import type { BenchCase } from './cases.js';
import type { GpuPeak } from './peaks.js';
import type { EnergySummary, GpuReport } from './smi.js';
import type { PairedResult, WorkerResult } from './protocol.js';
import type { LoopResult } from './loop.js';
import type { LossesResult } from './losses.js';
import type { Bf16Result } from './bf16.js';

export interface ResultRow extends WorkerResult {
  energy: EnergySummary | null;
  tokensPerSecond?: number | null;
  /** Model FLOPs (6NVD for fwd+bwd) per second, in TFLOP/s. */
  tflops?: number | null;
  /** tflops ÷ the GPU's published dense peak for the case's dtype (GPU timings only). */
  peakFraction?: number | null;
  /** cutloss's median ÷ this row's: below 1, cutloss is faster. */
  cutlossRatio?: number | null;
}

export interface CaseReport {
  case: BenchCase;
  rows: ResultRow[];
  skipped: { contestant: string; reason: string }[];
  paired: PairedResult[];
  /** Anything the reader must know about the case as a whole (e.g. that it was run again). */
  note?: string;
}

export interface BenchReport {
  version: string;
  date: string;
  backend: string;
  backendDetails: Record<string, unknown>;
  settings: { quick: boolean; tiny: boolean; runs: number; threads: number; energyWindowMs: number; budgetSeconds: number | null; cases: string[] };
  machine: { cpu: string; cores: number; memoryGiB: number; node: string; platform: string; gitCommit: string | null };
  gpu: GpuReport & { sampledIndex: number | null; peak: GpuPeak | null; cudaRuntime: string | null; peakTflops: { bf16: number | null; fp32: number } | null };
  peers: {
    python: string | null; torch: string | null; torchCuda: boolean; cce: string | null; liger: string | null;
    tfjs: boolean; tfjsWasm: boolean; onnxruntime: boolean; missing: { peer: string; reason: string }[];
  };
  cases: CaseReport[];
  /** S1-loop: per-call time of crossEntropy in loops with fresh, awaited, reused (out) and in-place results. */
  loop?: LoopResult;
  /** S2-losses and zscore-sweep (lib/bench/losses.ts). */
  losses?: LossesResult;
  /** S2-bf16, S2-peaked-bf16, sweep-bf16 (lib/bench/bf16.ts). */
  bf16?: Bf16Result;
  totalSeconds: number;
  charts?: { files: string[]; reason: string | null };
}

export const fmtMs = (ms: number): string =>
  ms >= 10_000 ? `${(ms / 1000).toFixed(1)} s` : ms >= 100 ? `${ms.toFixed(0)} ms` : ms >= 1 ? `${ms.toFixed(1)} ms` : `${ms.toFixed(3)} ms`;
const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
const num = (x: number) => (x >= 1e6 ? `${(x / 1e6).toFixed(2)} M` : x >= 1e3 ? `${(x / 1e3).toFixed(1)} k` : x.toFixed(0));

/** The time a case cannot beat on this GPU: its model FLOPs at the dense peak, or its bytes at the memory bandwidth. */
export function modelledLimitMs(c: BenchCase, peak: GpuPeak | null): { ms: number; what: string } | null {
  if (peak === null) return null;
  if (c.kind === 'linear') {
    const tflops = c.dtype === 'bf16' ? peak.bf16 : peak.fp32;
    if (tflops === null) return null;
    return { ms: (6 * c.N * c.V * c.D) / (tflops * 1e12) * 1e3, what: `6·N·V·D at ${tflops} TFLOP/s (${c.dtype === 'bf16' ? 'bf16 tensor cores' : 'fp32'}), ${peak.model}` };
  }
  // the logits read twice and the result written once
  const bytes = 3 * c.N * c.V * (c.dtype === 'bf16' ? 2 : 4);
  return { ms: (bytes / (peak.memoryTBps * 1e12)) * 1e3, what: `logits read twice, written once at ${peak.memoryTBps} TB/s, ${peak.model}` };
}

function memoryCell(r: ResultRow): string {
  const parts: string[] = [];
  if (r.device !== null) {
    parts.push(mib(r.device.peakBytes));
    const used = r.device.before.freeBytes - r.device.after.freeBytes;
    parts.push(`memGetInfo Δ ${mib(used)}`);
  }
  if (r.energy?.peakMemoryRiseMiB != null) parts.push(`smi +${r.energy.peakMemoryRiseMiB.toFixed(0)} MiB`);
  else if (r.energy?.peakMemoryUsedMiB != null) parts.push(`smi peak ${r.energy.peakMemoryUsedMiB.toFixed(0)} MiB`);
  if (r.host !== null) parts.push(`${mib(r.host.extraBytes)} beyond ${mib(r.host.returnedBytes)} returned`);
  return parts.length === 0 ? '—' : parts.join('; ');
}

function energyCell(r: ResultRow): string {
  const e = r.energy;
  if (e === null) return '—';
  if (e.joulesPerToken === null) return `— (${e.notes[0] ?? 'no energy'})`;
  const mj = e.joulesPerToken * 1e3;
  const power = e.meanPowerW === null ? '' : `, ${e.meanPowerW.toFixed(0)} W`;
  return `${mj < 0.1 ? mj.toExponential(2) : mj.toFixed(2)} mJ${power} (${e.energySource === 'energy counter' ? 'counter' : 'P×t'})`;
}

export function markdownReport(r: BenchReport): string {
  const out: string[] = [];
  out.push(`# cutloss bench: \`${r.backend}\`${r.settings.tiny ? ', tiny shapes' : ''}${r.settings.quick ? ', --quick' : ''}`);
  out.push('');
  out.push(`cutloss ${r.version}${r.machine.gitCommit ? ` (${r.machine.gitCommit})` : ''}, ${r.date}, ${r.settings.runs} timed runs after warm-up; medians (min–max).`);
  out.push('');
  out.push('## GPU');
  out.push('');
  if (r.gpu.gpus.length === 0) {
    out.push(`No GPU facts: ${r.gpu.reason ?? 'nvidia-smi lists no GPU'}.`);
  } else {
    out.push('| index | name | driver | CUDA | memory | max SM clock | max memory clock | power limit | compute capability | MIG |');
    out.push('|---|---|---|---|---|---|---|---|---|---|');
    const v = (x: number | string | null, unit = '') => (x === null ? 'N/A' : `${x}${unit}`);
    for (const g of r.gpu.gpus) {
      out.push(`| ${g.index}${g.index === r.gpu.sampledIndex ? ' (sampled)' : ''} | ${g.name} | ${v(g.driverVersion)} | ${v(r.gpu.cudaVersion)} | ${v(g.memoryTotalMiB, ' MiB')} | ${v(g.maxSmClockMHz, ' MHz')} | ${v(g.maxMemoryClockMHz, ' MHz')} | ${v(g.powerLimitW, ' W')} | ${v(g.computeCapability)} | ${v(g.migMode)} |`);
    }
    if (r.gpu.unknownFields.length > 0) out.push('', `This nvidia-smi does not know: ${r.gpu.unknownFields.join(', ')}.`);
    const p = r.gpu.peak;
    out.push('', p === null ? 'Published peaks: this GPU is not in the table (lib/bench/peaks.ts): no TFLOP/s fraction.'
      : `Published dense peaks (${p.model}): bf16 ${p.bf16 ?? 'N/A'} TFLOP/s, fp32 ${p.fp32} TFLOP/s, memory ${p.memoryTBps} TB/s.`);
    if (r.backend === 'cuda-emu') {
      out.push('', 'The timings below are of **cuda-emu** (the kernels on the CPU under the SIMT emulator): the nvidia-smi figures are the GPU\'s, not the emulator\'s, and no ratio to the GPU\'s peak is taken.');
    }
  }
  out.push('');
  out.push(`Machine: ${r.machine.cpu}, ${r.machine.cores} cores, ${r.machine.memoryGiB} GiB, Node ${r.machine.node}; backend details: ${Object.entries(r.backendDetails).filter(([, x]) => !Array.isArray(x) && String(x) !== '' && String(x).length < 120).map(([k, x]) => `${k} ${String(x)}`).join(', ') || 'none'}.`);
  out.push('');
  out.push('## Results');
  out.push('');
  out.push('| case | contestant | fwd | bwd | fwd+bwd | tokens/s | peak memory | energy / token | model FLOP/s | cutloss ÷ this | loss |');
  out.push('|---|---|---|---|---|---|---|---|---|---|---|');
  for (const c of r.cases) {
    const shape = c.case.kind === 'linear' ? `N ${c.case.N}, D ${c.case.D}, V ${c.case.V}` : `[${c.case.N}, ${c.case.V}]`;
    const name = `${c.case.name} (${shape}, ${c.case.dtype})`;
    for (const row of c.rows) {
      const bwd = row.fwd !== null ? fmtMs(Math.max(0, row.fwdBwd.medianMs - row.fwd.medianMs)) : '—';
      const fb = `${fmtMs(row.fwdBwd.medianMs)} (${fmtMs(row.fwdBwd.minMs)}–${fmtMs(row.fwdBwd.maxMs)})`;
      const rate = row.tflops == null ? '—' : row.tflops >= 1 ? `${row.tflops.toFixed(1)} TFLOP/s` : `${(row.tflops * 1e3).toPrecision(3)} GFLOP/s`;
      const tf = row.peakFraction == null ? rate : `${rate} (${(row.peakFraction * 100).toFixed(0)}% of peak)`;
      out.push(`| ${name} | ${row.label} | ${row.fwd === null ? '—' : fmtMs(row.fwd.medianMs)} | ${bwd} | ${fb} | ${row.tokensPerSecond == null ? '—' : num(row.tokensPerSecond)} | ${memoryCell(row)} | ${energyCell(row)} | ${tf} | ${row.cutlossRatio == null ? '' : row.cutlossRatio.toFixed(2)} | ${row.loss == null ? '—' : row.loss.toFixed(5)} |`);
    }
    const cut = c.rows.find((x) => x.contestant === 'cutloss' && !x.label.includes('workspace'));
    const limit = r.backend === 'cuda' ? modelledLimitMs(c.case, r.gpu.peak) : null;
    if (limit !== null) {
      out.push(`| ${name} | limit (modelled) | | | ${fmtMs(limit.ms)} | | | | | ${cut === undefined ? '' : (cut.fwdBwd.medianMs / limit.ms).toFixed(2)} | |`);
    }
    for (const p of c.paired) {
      out.push(`| ${name} | in turns: ${p.labels[0]} ÷ ${p.labels[1]} | | | ${fmtMs(p.mediansMs[0])} / ${fmtMs(p.mediansMs[1])} | | | | | median of ${p.pairs} pair ratios: ${p.ratio.toFixed(2)} | |`);
    }
  }
  out.push('');
  out.push('Notes per row:');
  out.push('');
  for (const c of r.cases) {
    if (c.note !== undefined) out.push(`- ${c.case.name}: ${c.note}`);
    for (const row of c.rows) {
      const extra = row.energy?.notes.length ? `; ${row.energy.notes.join('; ')}` : '';
      out.push(`- ${c.case.name}, ${row.label}: ${row.note || '—'}; clock ${row.clock}${row.energy ? `; ${row.energy.samples} nvidia-smi samples, ${row.energy.windowSamples} in the energy window` : ''}${extra}`);
    }
  }
  out.push('');
  out.push('`bwd` is fwd+bwd − fwd (cutloss computes both in one fused call). Peak memory: on a device, the allocator\'s high-water mark ' +
    'during the first call above what was live before it (cutloss\'s buffers; torch.cuda.max_memory_allocated), the drop in cudaMemGetInfo\'s free memory ' +
    '(results alive) and nvidia-smi\'s memory.used peak over its value before the contestant started; on the host, VmHWM growth of the first call beyond the results it returns. ' +
    'Energy per token: the difference of nvidia-smi\'s total_energy_consumption counter over the energy window (counter), else mean sampled power.draw × the window (P×t). ' +
    'TFLOP/s counts model FLOPs, 6·N·V·D for forward + backward (the logits\' recomputation not counted).');
  const left = [...r.peers.missing.map((m) => `- peer ${m.peer}: ${m.reason}`), ...r.cases.flatMap((c) => c.skipped.map((s) => `- ${c.case.name}, ${s.contestant}: ${s.reason}`))];
  if (left.length > 0) {
    out.push('');
    out.push('## Left out');
    out.push('');
    out.push(...left);
  }
  out.push('');
  out.push(`Total ${r.totalSeconds.toFixed(0)} s.`);
  return `${out.join('\n')}\n`;
}
