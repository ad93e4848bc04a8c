// `cutloss doctor` (lib/cli.ts, lib/doctor.ts) as a user runs it: the built bin in a fresh
// process. Here there is no GPU, so it must say why and run its checks under cuda-emu.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { compare, type DoctorReport } from '../lib/doctor.js';
import { backends } from '../lib/index.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const bin = `${root}/dist/esm/cli.js`;

function cutloss(...args: string[]) {
  const env = { ...process.env };
  delete env.CUTLOSS_BACKEND;
  const r = spawnSync(bin, args, { cwd: root, encoding: 'utf8', env, timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const ROW_OPS = [
  'logSumExp', 'softmax', 'logSoftmax', 'softmaxBackward', 'logSoftmaxBackward', 'stablemax', 'logStablemax',
  'stablemaxBackward', 'logStablemaxBackward', 'sparsemax', 'sparsemaxBackward', 'entmax15', 'entmax15Backward',
  'gumbelSoftmax', 'gumbelSoftmaxBackward',
];
const cuda = backends().find((b) => b.name === 'cuda')!;

describe('cutloss doctor', () => {
  it('--quick prints the backends with their reasons, the GPU, and a passing check of every kernel; exit status 0', () => {
    const r = cutloss('doctor', '--quick', '--seed', '7');
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const out = r.stdout;
    expect(out).toMatch(/^cutloss \d+\.\d+\.\d+ doctor: Node v\d+/);
    for (const b of backends()) {
      expect(out).toContain(`  ${b.available ? 'yes' : 'no '}  ${b.name.padEnd(9)} ${b.reason}`);
    }
    expect(out).toMatch(/\nGPU \(nvidia-smi\)\n {2}(nvidia-smi not found|nvidia-smi failed: .*|\d+: .+, driver .+, compute capability .+)\n/);
    if (!cuda.available) {
      expect(out).toContain(`Checks on cuda-emu against the js reference: no usable GPU (cuda: ${cuda.reason}): the same checks run under cuda-emu, on small shapes (seed 7, quick)`);
    }
    const checks = out.split('\n').filter((l) => /^ {2}(pass|FAIL) {2}/.test(l));
    expect(checks.length).toBeGreaterThan(100);
    expect(checks.filter((l) => l.startsWith('  FAIL'))).toEqual([]);
    for (const op of [...ROW_OPS, 'crossEntropy']) {
      for (const dtype of ['f32', 'bf16']) {
        expect(checks.some((l) => l.startsWith(`  pass  ${op} [`) && l.includes(`] ${dtype}`)), `${op} ${dtype}`).toBe(true);
      }
    }
    expect(checks[0]).toMatch(/max abs \S+ +max rel \S+ +\(rtol \S+\) +\d+ ms$/);
    expect(out).toMatch(/\nOK: \d+ passed, 0 failed, \d+ skipped on cuda-emu \(\d+\.\d s\)\n$/);
  }, 150_000);

  it('--json prints the report alone: every check with its errors and tolerance', () => {
    const r = cutloss('doctor', '--quick', '--json', '--seed', '7', '--backend', 'cuda-emu');
    expect(r.status).toBe(0);
    const report = JSON.parse(r.stdout) as DoctorReport;
    expect(report).toMatchObject({ passed: true, failed: 0, seed: 7, quick: true, target: { backend: 'cuda-emu', available: true, emulated: true } });
    expect(report.backends.map((b) => b.name)).toEqual(backends().map((b) => b.name));
    expect(typeof report.gpu.message).toBe('string');
    const ops = new Set(report.checks.map((c) => c.op));
    for (const op of [...ROW_OPS, 'crossEntropy']) expect(ops.has(op), op).toBe(true);
    // crossEntropy with several option sets, and reduction 'none'
    expect(new Set(report.checks.filter((c) => c.op === 'crossEntropy').map((c) => c.variant)).size).toBeGreaterThanOrEqual(8);
    for (const c of report.checks) {
      expect(c.maxRelError, `${c.op} ${c.variant}`).toBeLessThanOrEqual(c.rtol);
      expect(c.shape.every((n) => Number.isInteger(n) && n >= 1)).toBe(true);
    }
    // linearCrossEntropy is checked where it has a native kernel, and said to be skipped where not
    const linearNative = String(backends().find((b) => b.name === 'cuda-emu')!.details.nativeOps).split(', ').includes('linearCrossEntropy');
    if (linearNative) expect(ops.has('linearCrossEntropy')).toBe(true);
    else expect(report.skipped.some((s) => s.startsWith('linearCrossEntropy: no native kernel'))).toBe(true);
  }, 150_000);

  it('a backend that is unavailable is a failure (status 1) that says why', (ctx) => {
    ctx.skip(cuda.available, 'cuda is available here');
    const r = cutloss('doctor', '--backend', 'cuda', '--quick');
    expect(r.status).toBe(1);
    expect(r.stdout).toContain(`  cuda is unavailable: ${cuda.reason}`);
    expect(r.stdout).toMatch(/\nFAILED: 0 passed, 0 failed, \d+ skipped on cuda/);
  });

  it('bad usage is status 2 with the usage text; --help is status 0', () => {
    for (const args of [['doctor', '--backend', 'js'], ['doctor', '--fast'], ['doctor', '--seed', '-1'], ['doctor', '--backend'], ['cure']]) {
      const r = cutloss(...args);
      expect(r.status, args.join(' ')).toBe(2);
      expect(r.stderr).toContain('Usage: cutloss doctor');
    }
    const help = cutloss('doctor', '--help');
    expect(help.status).toBe(0);
    expect(help.stdout).toContain('--backend NAME');
    expect(cutloss().status).toBe(2);
  });
});

describe('the comparison the doctor uses', () => {
  it('judges each output against its own size; NaN and ±inf must match in place', () => {
    expect(compare([1, 2, 3], [1, 2, 3], 1e-5, 0)).toEqual({ passed: true, maxAbsError: 0, maxRelError: 0 });
    const small = compare([1e-3, 100.0001], [0, 100], 1e-5, 0); // 1e-3 is within 1e-5 of the output's size 100
    expect(small.passed).toBe(true);
    expect(small.maxAbsError).toBeCloseTo(1e-3, 12);
    expect(small.maxRelError).toBeCloseTo(1e-5, 9);
    expect(compare([0, 100.01], [0, 100], 1e-5, 0).passed).toBe(false);
    expect(compare([NaN, 1, -Infinity], [NaN, 1, -Infinity], 1e-5, 0).passed).toBe(true);
    expect(compare([0, 1], [NaN, 1], 1e-5, 0)).toMatchObject({ passed: false, maxAbsError: Infinity });
    expect(compare([NaN, 1], [0, 1], 1e-5, 0).passed).toBe(false);
    expect(compare([Infinity], [-Infinity], 1e-5, 0).passed).toBe(false);
    expect(compare([1, 2], [1], 1e-5, 0).passed).toBe(false);
    expect(compare([1e-9], [0], 1e-5, 1e-8)).toMatchObject({ passed: true, maxRelError: 1e-9 / (1e-8 / 1e-5) });
  });
});
