// Peak memory of one call on Linux: reset the kernel's RSS high-water mark (VmHWM) to the
// current RSS, run the call, read the mark again. The growth counts everything the call
// touched: V8 heap, ArrayBuffers (tfjs's storage), native allocations.
import { readFileSync, writeFileSync } from 'node:fs';

declare const gc: (() => void) | undefined;

const hwm = () => Number(/VmHWM:\s+(\d+)\s+kB/.exec(readFileSync('/proc/self/status', 'utf8'))![1]) * 1024;

export async function peakGrowth<T>(fn: () => T): Promise<{ value: T; growthBytes: number; ms: number }> {
  if (typeof gc === 'function') gc(); // run with --expose-gc: freed buffers leave the RSS first
  await new Promise((r) => setTimeout(r, 50));
  if (typeof gc === 'function') gc();
  writeFileSync('/proc/self/clear_refs', '5');
  const before = hwm();
  const t0 = performance.now();
  const value = fn();
  const ms = performance.now() - t0;
  return { value, growthBytes: hwm() - before, ms };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}
