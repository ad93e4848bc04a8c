// The blockwise claim, measured: linearCrossEntropy never holds the N×V logits. Each call
// runs in a fresh process, and its peak is the process's own high-water mark (VmHWM reset
// before the call; getrusage's maxRSS would inherit the parent's peak and hide growth).
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const probe = fileURLToPath(new URL('./fixtures/memory-probe.ts', import.meta.url));
const built = existsSync(fileURLToPath(new URL('../dist/esm/index.js', import.meta.url)));
const MB = 1024 * 1024;

function measure(N: number, D: number, V: number, withGrad: boolean) {
  const args = ['--expose-gc', '--import', 'tsx', probe, String(N), String(D), String(V), withGrad ? '1' : '0'];
  // The blockwise claim is the reference backend's; native backends are measured by the benchmarks.
  const out = execFileSync(process.execPath, args, { encoding: 'utf8', env: { ...process.env, CUTLOSS_BACKEND: 'js' } });
  return JSON.parse(out) as { loss: number; growthBytes: number; source: string; returnedBytes: number; seconds: number };
}

describe.skipIf(!built)('blockwise memory (built package; npm test builds it)', () => {
  it('N=1024, V=50000: peak growth far below the 195 MiB the logits would take', { timeout: 120_000 }, () => {
    const [N, D, V] = [1024, 32, 50000];
    const logitBytes = N * V * 4;
    const fwd = measure(N, D, V, false);
    const both = measure(N, D, V, true);
    const net = both.growthBytes - both.returnedBytes;
    expect(fwd.source).toBe('VmHWM'); // Linux: the only reading that cannot hide growth
    console.log(
      `linearCrossEntropy N=${N} D=${D} V=${V}: logits would be ${(logitBytes / MB).toFixed(0)} MiB; ` +
        `peak RSS growth forward ${(fwd.growthBytes / MB).toFixed(1)} MiB (${fwd.seconds.toFixed(1)} s), ` +
        `forward+backward ${(both.growthBytes / MB).toFixed(1)} MiB with returned gradients of ` +
        `${(both.returnedBytes / MB).toFixed(1)} MiB (${both.seconds.toFixed(1)} s)`,
    );
    expect(Number.isFinite(fwd.loss)).toBe(true);
    expect(Math.abs(both.loss - fwd.loss)).toBeLessThan(1e-9);
    expect(fwd.growthBytes).toBeLessThan(64 * MB);
    expect(net).toBeLessThan(64 * MB);
  });
});
