// nvidia-smi as the benchmark reads it: the GPU's facts for the report's head, a sampler that
// runs `nvidia-smi --query-gpu=… -lms 100` beside a case, the energy counter, and the
// arithmetic that turns them into peak memory, mean power and joules per token.
// Parsing takes nvidia-smi's CSV as drivers print it: `, `-separated, "[N/A]", "N/A" or
// "[Not Supported]" where a field is not exposed (MIG, older GPUs), with or without units.

import { execFile, spawn, type ChildProcess } from 'node:child_process';

/** The fields the sampler asks for, in this order. */
export const SAMPLE_FIELDS = [
  'timestamp', 'power.draw', 'utilization.gpu', 'utilization.memory', 'memory.used', 'clocks.sm', 'temperature.gpu',
] as const;

/** The facts that head a report. Fields an old driver does not know are dropped and asked again. */
export const FACT_FIELDS = [
  'index', 'name', 'driver_version', 'memory.total', 'clocks.max.sm', 'clocks.max.memory', 'power.limit',
  'compute_cap', 'mig.mode.current',
] as const;

/** A number from one CSV cell, or null where nvidia-smi says the value is not available. */
export function smiNumber(cell: string | undefined): number | null {
  if (cell === undefined) return null;
  const t = cell.trim();
  // "[N/A]", "N/A", "[Not Supported]", "[Unknown Error]", "[Insufficient Permissions]", ""
  if (t === '' || t.startsWith('[') || /^n\/?a$/i.test(t)) return null;
  // with units (no `nounits`): "81559 MiB", "700.00 W", "1980 MHz", "45 %", "123456 mJ"
  const m = /^(-?\d+(?:\.\d+)?)(?:\s*(%|[A-Za-z]+))?$/.exec(t);
  if (m === null) return null;
  const v = Number(m[1]);
  const unit = m[2]?.toLowerCase();
  if (unit === 'gib') return v * 1024; // memory is MiB elsewhere
  if (unit === 'kw') return v * 1000;
  return v;
}

/** Cells of one CSV line: nvidia-smi separates with ", " and never quotes. */
export function smiCells(line: string): string[] {
  return line.split(',').map((c) => c.trim());
}

/** "2024/05/14 10:21:33.512" (nvidia-smi's timestamp) → ms since the epoch, local time; NaN when not one. */
export function smiTimestamp(cell: string): number {
  const m = /^(\d{4})\/(\d{2})\/(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,3}))?$/.exec(cell.trim());
  if (m === null) return NaN;
  const [, y, mo, d, h, mi, s, frac] = m;
  return new Date(+y!, +mo! - 1, +d!, +h!, +mi!, +s!, Number((frac ?? '0').padEnd(3, '0'))).getTime();
}

export interface GpuFacts {
  index: number;
  name: string;
  driverVersion: string | null;
  /** MiB. */
  memoryTotalMiB: number | null;
  maxSmClockMHz: number | null;
  maxMemoryClockMHz: number | null;
  /** W. */
  powerLimitW: number | null;
  computeCapability: string | null;
  /** 'Enabled' / 'Disabled'; null where the GPU has no MIG or the driver does not say. */
  migMode: string | null;
}

/** One line per GPU of `--query-gpu=<fields> --format=csv,noheader,nounits`. */
export function parseFacts(output: string, fields: readonly string[]): GpuFacts[] {
  const text = (cells: string[], f: string): string | null => {
    const i = fields.indexOf(f);
    const v = i < 0 ? undefined : cells[i];
    return v === undefined || v === '' || v.startsWith('[') || /^n\/?a$/i.test(v) ? null : v;
  };
  const num = (cells: string[], f: string): number | null => {
    const i = fields.indexOf(f);
    return i < 0 ? null : smiNumber(cells[i]);
  };
  return output.split('\n').filter((l) => l.trim() !== '').map((line, k) => {
    const cells = smiCells(line);
    return {
      index: num(cells, 'index') ?? k,
      name: text(cells, 'name') ?? 'unknown GPU',
      driverVersion: text(cells, 'driver_version'),
      memoryTotalMiB: num(cells, 'memory.total'),
      maxSmClockMHz: num(cells, 'clocks.max.sm'),
      maxMemoryClockMHz: num(cells, 'clocks.max.memory'),
      powerLimitW: num(cells, 'power.limit'),
      computeCapability: text(cells, 'compute_cap'),
      migMode: text(cells, 'mig.mode.current'),
    };
  });
}

/** "CUDA Version: 12.4" from nvidia-smi's plain banner; null when it does not say. */
export function parseCudaVersion(banner: string): string | null {
  return /CUDA Version\s*:\s*([\d.]+)/.exec(banner)?.[1] ?? null;
}

export interface SmiSample {
  /** ms since the epoch, from nvidia-smi's own timestamp. */
  t: number;
  powerW: number | null;
  utilizationGpu: number | null;
  utilizationMemory: number | null;
  memoryUsedMiB: number | null;
  smClockMHz: number | null;
  temperatureC: number | null;
}

/** Lines of the sampler (SAMPLE_FIELDS order); lines that are not samples (errors, blanks) are skipped. */
export function parseSamples(output: string): SmiSample[] {
  const out: SmiSample[] = [];
  for (const line of output.split('\n')) {
    const c = smiCells(line);
    if (c.length !== SAMPLE_FIELDS.length) continue;
    const t = smiTimestamp(c[0]!);
    if (Number.isNaN(t)) continue;
    out.push({
      t, powerW: smiNumber(c[1]), utilizationGpu: smiNumber(c[2]), utilizationMemory: smiNumber(c[3]),
      memoryUsedMiB: smiNumber(c[4]), smClockMHz: smiNumber(c[5]), temperatureC: smiNumber(c[6]),
    });
  }
  return out;
}

/** The energy counter (`total_energy_consumption`, mJ since the driver loaded); null where not exposed. */
export function parseEnergy(output: string): number | null {
  const line = output.split('\n').find((l) => l.trim() !== '');
  return line === undefined ? null : smiNumber(line);
}

// ---------------------------------------------------------------- running nvidia-smi

export interface SmiRun {
  ok: boolean;
  stdout: string;
  /** Why it failed: not found, its own words, a timeout. */
  error: string | null;
}

export function runSmi(args: string[], timeoutMs = 15_000): Promise<SmiRun> {
  return new Promise((resolve) => {
    execFile('nvidia-smi', args, { encoding: 'utf8', timeout: timeoutMs }, (err, stdout, stderr) => {
      if (err === null) return resolve({ ok: true, stdout, error: null });
      const e = err as NodeJS.ErrnoException & { killed?: boolean };
      const why = e.code === 'ENOENT' ? 'nvidia-smi not found on PATH'
        : e.killed === true ? `nvidia-smi did not answer within ${timeoutMs / 1000} s`
        : `nvidia-smi failed: ${(stdout + stderr).trim().split('\n')[0] || e.message}`;
      resolve({ ok: false, stdout, error: why });
    });
  });
}

export interface GpuReport {
  found: boolean;
  /** Why there are no facts, when there are none. */
  reason: string | null;
  cudaVersion: string | null;
  gpus: GpuFacts[];
  /** Fields the driver refused (an older nvidia-smi), left out of the query. */
  unknownFields: string[];
}

/** The facts of every GPU; fields the driver does not know are dropped one by one and the query repeated. */
export async function queryGpuFacts(): Promise<GpuReport> {
  const fields: string[] = [...FACT_FIELDS];
  const unknownFields: string[] = [];
  for (;;) {
    const r = await runSmi([`--query-gpu=${fields.join(',')}`, '--format=csv,noheader,nounits']);
    const bad = /Field "([^"]+)" is not a valid field to query/.exec(r.stdout + (r.error ?? ''));
    if (!r.ok && bad !== null && fields.includes(bad[1]!) && bad[1] !== 'name') {
      unknownFields.push(bad[1]!);
      fields.splice(fields.indexOf(bad[1]!), 1);
      continue;
    }
    if (!r.ok) return { found: false, reason: r.error, cudaVersion: null, gpus: [], unknownFields };
    const banner = await runSmi([]);
    return { found: true, reason: null, cudaVersion: parseCudaVersion(banner.stdout), gpus: parseFacts(r.stdout, fields), unknownFields };
  }
}

/** The GPU a CUDA process sees as device 0: the first entry of CUDA_VISIBLE_DEVICES when it is an index, else 0. */
export function visibleGpuIndex(env: NodeJS.ProcessEnv = process.env): number {
  const first = env.CUDA_VISIBLE_DEVICES?.split(',')[0]?.trim();
  return first !== undefined && /^\d+$/.test(first) ? Number(first) : 0;
}

export async function readEnergyMilliJoules(gpu: number): Promise<{ mJ: number | null; reason: string | null }> {
  const r = await runSmi(['-i', String(gpu), '--query-gpu=total_energy_consumption', '--format=csv,noheader,nounits']);
  if (!r.ok) return { mJ: null, reason: r.error };
  const mJ = parseEnergy(r.stdout);
  return { mJ, reason: mJ === null ? `the driver does not expose total_energy_consumption ("${r.stdout.trim()}")` : null };
}

/** `nvidia-smi -i <gpu> --query-gpu=<SAMPLE_FIELDS> -lms <interval>` running beside a case. */
export class SmiSampler {
  private child: ChildProcess | null = null;
  private text = '';
  private error: string | null = null;
  private exited: Promise<void> = Promise.resolve();

  constructor(private readonly gpu: number, private readonly intervalMs = 100) {}

  start(): void {
    const child = spawn('nvidia-smi', [
      '-i', String(this.gpu), `--query-gpu=${SAMPLE_FIELDS.join(',')}`, '--format=csv,noheader,nounits', '-lms', String(this.intervalMs),
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    child.stdout!.setEncoding('utf8').on('data', (d: string) => { this.text += d; });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => { this.error = (this.error ?? '') + d; });
    this.exited = new Promise((resolve) => {
      child.on('error', (e: NodeJS.ErrnoException) => {
        this.error = e.code === 'ENOENT' ? 'nvidia-smi not found on PATH' : e.message;
        resolve();
      });
      child.on('exit', () => resolve());
    });
  }

  /** Stops it and returns what it printed. */
  async stop(): Promise<{ samples: SmiSample[]; error: string | null }> {
    this.child?.kill('SIGTERM');
    await this.exited;
    const samples = parseSamples(this.text);
    return { samples, error: samples.length === 0 ? (this.error?.trim() || 'nvidia-smi printed no samples') : null };
  }
}

// ---------------------------------------------------------------- the arithmetic

export interface EnergyWindow {
  /** When the window began (ms since the epoch, the clock nvidia-smi stamps samples with) and its host-timed length. */
  windowStartMs: number;
  windowMs: number;
  /** Tokens processed in the window (rows × calls). */
  tokens: number;
  /** Every sample of the case: peak memory is over all of them, power over those inside the window. */
  samples: SmiSample[];
  /** Energy counter before and after the window, mJ (null: not exposed). */
  counterBeforeMJ: number | null;
  counterAfterMJ: number | null;
  /** memory.used just before the case's first allocation, MiB (null: not sampled). */
  memoryBeforeMiB: number | null;
}

export interface EnergySummary {
  samples: number;
  /** Samples inside the energy window (power, utilization and clock are their means). */
  windowSamples: number;
  /** Largest memory.used seen, MiB, and its rise over the value before the case. */
  peakMemoryUsedMiB: number | null;
  peakMemoryRiseMiB: number | null;
  meanPowerW: number | null;
  meanUtilizationGpu: number | null;
  meanSmClockMHz: number | null;
  maxTemperatureC: number | null;
  joules: number | null;
  /** How joules were found: the energy counter's difference, or mean sampled power × the window. */
  energySource: 'energy counter' | 'power × time' | null;
  joulesPerToken: number | null;
  tokensPerSecond: number;
  /** Why a figure is missing. */
  notes: string[];
}

const mean = (xs: (number | null)[]): number | null => {
  const v = xs.filter((x): x is number => x !== null);
  return v.length === 0 ? null : v.reduce((a, b) => a + b, 0) / v.length;
};
const max = (xs: (number | null)[]): number | null => {
  const v = xs.filter((x): x is number => x !== null);
  return v.length === 0 ? null : Math.max(...v);
};

export function summarizeWindow(w: EnergyWindow): EnergySummary {
  const notes: string[] = [];
  const seconds = w.windowMs / 1000;
  const peak = max(w.samples.map((s) => s.memoryUsedMiB));
  // One sampling interval of slack at each end: nvidia-smi stamps a sample when it is taken.
  let inside = w.samples.filter((s) => s.t >= w.windowStartMs - 100 && s.t <= w.windowStartMs + w.windowMs + 100);
  if (inside.length === 0 && w.samples.length > 0) {
    notes.push('no sample fell inside the energy window (clocks differ?): power is the mean of every sample of the case');
    inside = w.samples;
  }
  const meanPowerW = mean(inside.map((s) => s.powerW));
  let joules: number | null = null;
  let energySource: EnergySummary['energySource'] = null;
  if (w.counterBeforeMJ !== null && w.counterAfterMJ !== null && w.counterAfterMJ >= w.counterBeforeMJ) {
    joules = (w.counterAfterMJ - w.counterBeforeMJ) / 1000;
    energySource = 'energy counter';
  } else {
    if (w.counterBeforeMJ !== null && w.counterAfterMJ !== null) notes.push('the energy counter went backwards (driver reloaded?)');
    if (meanPowerW !== null) {
      joules = meanPowerW * seconds;
      energySource = 'power × time';
    } else {
      notes.push(w.samples.length === 0 ? 'no nvidia-smi samples: no energy' : 'power.draw not exposed: no energy');
    }
  }
  if (peak === null) notes.push(w.samples.length === 0 ? 'no nvidia-smi samples' : 'memory.used not exposed (MIG?)');
  return {
    samples: w.samples.length,
    windowSamples: inside.length,
    peakMemoryUsedMiB: peak,
    peakMemoryRiseMiB: peak !== null && w.memoryBeforeMiB !== null ? peak - w.memoryBeforeMiB : null,
    meanPowerW,
    meanUtilizationGpu: mean(inside.map((s) => s.utilizationGpu)),
    meanSmClockMHz: mean(inside.map((s) => s.smClockMHz)),
    maxTemperatureC: max(w.samples.map((s) => s.temperatureC)),
    joules,
    energySource,
    joulesPerToken: joules === null || w.tokens === 0 ? null : joules / w.tokens,
    tokensPerSecond: seconds > 0 ? w.tokens / seconds : 0,
    notes,
  };
}
