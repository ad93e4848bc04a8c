// Peak-memory and timing helpers for the worker processes.
//
// Peak memory is read just before and just after one call: growth = peak after − peak before.
// Two readings of the peak are taken:
//   - process.resourceUsage().maxRSS (getrusage's ru_maxrss, KiB);
//   - VmHWM from /proc/self/status (Linux: the high-water mark of this process's own memory).
// They differ in a spawned child: Linux folds the RSS peak of the process *before exec* into
// ru_maxrss, and with fork/vfork that is the parent's peak. So a child's maxRSS never reads
// below its parent's peak RSS, and a call whose peak stays under that floor shows no growth
// at all. VmHWM has no such floor, and `echo 5 > /proc/self/clear_refs` resets it to the
// current RSS, so "before" is exactly the RSS at the start of the call (no leftovers from
// module loading or input generation). On Linux the VmHWM reading is the primary one; the
// maxRSS reading is reported next to it, and elsewhere it is the only one.

import { readFileSync, writeFileSync } from 'node:fs';

const KiB = 1024;

declare const gc: (() => void) | undefined;

function collect(): void {
  if (typeof gc === 'function') gc();
}

/** Full GC twice around a short pause, so freed ArrayBuffers have left the RSS. */
export async function settle(): Promise<void> {
  collect();
  await new Promise((r) => setTimeout(r, 50));
  collect();
}

/** Resets the kernel's RSS high-water mark (VmHWM) to the current RSS; false where not possible. */
function resetPeak(): boolean {
  if (process.platform !== 'linux') return false;
  try {
    writeFileSync('/proc/self/clear_refs', '5');
    return true;
  } catch {
    return false;
  }
}

/** VmHWM and VmRSS in bytes, or null off Linux. */
function procStatus(): { hwm: number; rss: number } | null {
  try {
    const s = readFileSync('/proc/self/status', 'utf8');
    const hwm = /VmHWM:\s+(\d+)\s+kB/.exec(s);
    const rss = /VmRSS:\s+(\d+)\s+kB/.exec(s);
    if (hwm === null || rss === null) return null;
    return { hwm: Number(hwm[1]) * KiB, rss: Number(rss[1]) * KiB };
  } catch {
    return null;
  }
}

export interface PeakGrowth {
  /** The primary reading, bytes: VmHWM growth where available (after a reset), else maxRSS growth. */
  growthBytes: number;
  source: 'VmHWM' | 'maxRSS';
  /** process.resourceUsage().maxRSS after − before, bytes. */
  maxRssGrowthBytes: number;
  maxRssBeforeBytes: number;
  maxRssAfterBytes: number;
  /** VmHWM after − before (null off Linux), bytes. */
  hwmGrowthBytes: number | null;
  /** Current RSS just before the call, bytes. */
  rssBeforeBytes: number;
  /** Whether VmHWM could be reset to the current RSS before the call. */
  peakReset: boolean;
  /** maxRSS before − RSS before: how far maxRSS sat above the RSS (the floor described above). */
  maxRssSlackBytes: number;
  /** Wall time of the call, ms. */
  ms: number;
}

/** After a GC, resets the peak and returns the function that reads the growth since then. */
async function startPeak(): Promise<() => PeakGrowth> {
  await settle();
  const peakReset = resetPeak();
  const st0 = procStatus();
  const rssBefore = st0?.rss ?? process.memoryUsage().rss;
  const before = process.resourceUsage().maxRSS * KiB;
  const t0 = performance.now();
  return () => {
    const ms = performance.now() - t0;
    const after = process.resourceUsage().maxRSS * KiB;
    const st1 = procStatus();
    const hwmGrowth = st0 !== null && st1 !== null && peakReset ? st1.hwm - st0.hwm : null;
    return {
      growthBytes: hwmGrowth ?? after - before,
      source: hwmGrowth !== null ? 'VmHWM' : 'maxRSS',
      maxRssGrowthBytes: after - before,
      maxRssBeforeBytes: before,
      maxRssAfterBytes: after,
      hwmGrowthBytes: hwmGrowth,
      rssBeforeBytes: rssBefore,
      peakReset,
      maxRssSlackBytes: Math.max(0, before - rssBefore),
      ms,
    };
  };
}

/** Runs `fn` once, after a GC, and reports its peak RSS growth and wall time. */
export async function measurePeak<T>(fn: () => T): Promise<{ value: T; peak: PeakGrowth }> {
  const finish = await startPeak();
  const value = fn();
  return { value, peak: finish() };
}

/** measurePeak for a call that settles asynchronously (a Promise-returning peer). */
export async function measurePeakAsync<T>(fn: () => Promise<T>): Promise<{ value: T; peak: PeakGrowth }> {
  const finish = await startPeak();
  const value = await fn();
  return { value, peak: finish() };
}

export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Times `runs` calls of `fn` (GC between them, outside the timed region), ms each. */
export async function timeRuns(runs: number, fn: () => unknown): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    await settle();
    const t0 = performance.now();
    fn();
    times.push(performance.now() - t0);
  }
  return times;
}
