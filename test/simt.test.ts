// The SIMT emulator's own tests (test/simt/emulator_test.cc), compiled with the host C++
// compiler in both context-switch variants: the x86-64 assembly switch and ucontext.
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
const work = mkdtempSync(path.join(tmpdir(), 'cutloss-simt-'));

function buildAndRun(variant: string, flags: string[]): string {
  const exe = path.join(work, `emulator_test_${variant}`);
  execFileSync('g++', ['-std=c++17', '-O1', '-Wall', '-Wextra', '-Werror', ...flags, '-I', 'cuda',
    'test/simt/emulator_test.cc', 'cuda/simt/simt.cc', '-o', exe], { cwd: root, stdio: 'pipe' });
  try {
    return execFileSync(exe, { encoding: 'utf8' });
  } catch (e) {
    return (e as { stdout?: string }).stdout ?? String(e);
  }
}

const CASES = [
  'block reduction, forward', 'block reduction, reverse', 'block reduction, shuffled',
  'missing __syncthreads changes the result in some order',
  'barrier skipped by some threads', 'barriers at two different sites', 'early exit past a barrier',
  'shuffle by half a warp', 'one warp shuffles and exits while the other waits at a barrier',
  'invalid launch configuration', 'the emulator works again after an error',
  'warp shuffles, ballot, any, all, forward', 'warp shuffles, ballot, any, all, reverse',
  'warp shuffles, ballot, any, all, shuffled', 'atomics', 'dynamic shared memory, unwritten words read as NaN',
  'multi-dimensional grids and blocks', '__syncthreads_count / _or / _and',
  'run orders: forward, reverse, and shuffled by seed', 'bf16 and half conversions round to nearest even',
  'wmma bf16 16x16x16 and tf32 16x16x8 match plain loops', 'wmma in divergent code',
];

for (const [variant, flags] of [['asm', []], ['ucontext', ['-DSIMT_USE_UCONTEXT']]] as const) {
  describe(`SIMT emulator (${variant} context switch)`, () => {
    const output = buildAndRun(variant, [...flags]);
    for (const name of CASES) {
      it(name, () => {
        const line = output.split('\n').find((l) => l === `ok ${name}` || l.startsWith(`FAIL ${name}:`));
        expect(line, output).toBe(`ok ${name}`);
      });
    }
    it('reports no failures', () => expect(output).toMatch(/^0 failed$/m));
  });
}
