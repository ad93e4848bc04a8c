// Peak-memory and timing helpers for the worker processes.
//
// Peak memory is the process's maxRSS (process.resourceUsage().maxRSS, KiB) read just before
// and just after one call: growth = after − before. maxRSS is a high-water mark, so "before"
// must not sit above the current RSS (leftovers of module loading or data generation would
// hide the first part of the call's growth). On Linux we therefore reset the high-water mark
// to the current RSS first (`echo 5 > /proc/self/clear_refs`, which getrusage follows);
// where that is not possible the slack (maxRSS − RSS before the call) is reported instead,
// and growth is then a lower bound that may be short by up to that slack.

import { writeFileSync } from 'node:fs';

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

/** Resets the kernel's RSS high-water mark to the current RSS; false where not possible. */
function resetPeak(): boolean {
  if (process.platform !== 'linux') return false;
  try {
    writeFileSync('/proc/self/clear_refs', '5');
    return true;
  } catch {
    return false;
  }
}

export interface PeakGrowth {
  /** maxRSS after − maxRSS before, bytes. */
  growthBytes: number;
  /** maxRSS before the call, bytes (after the reset when peakReset). */
  maxRssBeforeBytes: number;
  maxRssAfterBytes: number;
  /** Current RSS just before the call, bytes. */
  rssBeforeBytes: number;
  /** Whether the high-water mark could be reset to the current RSS before the call. */
  peakReset: boolean;
  /** maxRSS − RSS just before the call (≈ 0 after a reset), bytes. */
  slackBytes: number;
  /** Wall time of the call, ms. */
  ms: number;
}

/** Runs `fn` once, after a GC, and reports its peak RSS growth and wall time. */
export async function measurePeak<T>(fn: () => T): Promise<{ value: T; peak: PeakGrowth }> {
  await settle();
  const peakReset = resetPeak();
  const rssBefore = process.memoryUsage().rss;
  const before = process.resourceUsage().maxRSS * KiB;
  const t0 = performance.now();
  const value = fn();
  const ms = performance.now() - t0;
  const after = process.resourceUsage().maxRSS * KiB;
  return {
    value,
    peak: {
      growthBytes: after - before,
      maxRssBeforeBytes: before,
      maxRssAfterBytes: after,
      rssBeforeBytes: rssBefore,
      peakReset,
      slackBytes: Math.max(0, before - rssBefore),
      ms,
    },
  };
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
