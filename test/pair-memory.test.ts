// No N×N (sigmoidPairLoss) and no N×V (the Z-loss) buffer: each call runs in a fresh process
// and its peak memory growth (VmHWM, reset before the call) must stay far below what the
// full logit matrix alone would take, on the reference backend and on cpu.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { backends } from '../lib/index.js';

const probe = fileURLToPath(new URL('./fixtures/pair-memory-probe.ts', import.meta.url));
const MB = 1024 * 1024;
const names = backends().filter((b) => b.available && (b.name === 'js' || b.name === 'cpu')).map((b) => b.name);

function measure(backend: string, args: number[], kind: string) {
  const out = execFileSync(process.execPath, ['--expose-gc', '--import', 'tsx', probe, kind, ...args.map(String)], {
    encoding: 'utf8', env: { ...process.env, CUTLOSS_BACKEND: backend },
  });
  return JSON.parse(out) as { loss: number; growthBytes: number; source: string; returnedBytes: number };
}

describe.each(names)('pairwise and moment losses hold no full logit matrix (%s)', (backend) => {
  it('sigmoidPairLoss N = 6000, D = 16: growth far below the 137 MiB of N×N f32 logits', { timeout: 300_000 }, () => {
    const [N, D] = [6000, 16];
    const r = measure(backend, [N, D], 'siglip');
    console.log(`sigmoidPairLoss ${backend} N=${N}: N×N would be ${(N * N * 4 / MB).toFixed(0)} MiB; growth ${(r.growthBytes / MB).toFixed(1)} MiB`);
    expect(r.source).toBe('VmHWM');
    expect(Number.isFinite(r.loss)).toBe(true);
    // cpu: the 8 MiB block of logits plus the BLAS's own buffers; js: a 64-row block
    expect(r.growthBytes - r.returnedBytes).toBeLessThan((N * N * 4) / 5);
  });

  it("normalizer 'zscore' N = 2048, V = 50000, D = 16: growth far below the 391 MiB of N×V logits", { timeout: 300_000 }, () => {
    const [N, D, V] = [2048, 16, 50000];
    const r = measure(backend, [N, D, V], 'zscore');
    console.log(`zscore ${backend} N=${N} V=${V}: N×V would be ${(N * V * 4 / MB).toFixed(0)} MiB; growth ${(r.growthBytes / MB).toFixed(1)} MiB`);
    expect(r.source).toBe('VmHWM');
    expect(Number.isFinite(r.loss)).toBe(true);
    expect(r.growthBytes - r.returnedBytes).toBeLessThan((N * V * 4) / 16);
  });
});
