// The SIMT emulator's own tests (test/simt/emulator_test.cc), compiled with the host C++
// compiler in both context-switch variants: the x86-64 assembly switch and ucontext.
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { RACE_CHECK_FLAGS } from './native/kernel-runner.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const work = mkdtempSync(path.join(tmpdir(), 'cutloss-simt-'));

function buildAndRun(variant: string, flags: string[]): string {
  const exe = path.join(work, `emulator_test_${variant}`);
  const cxx = ['g++', '-std=c++17', '-O1', '-Wall', '-Wextra', '-Werror', ...flags, '-I', 'cuda'];
  // The kernels get the race checker's instrumentation; the emulator itself must not.
  execFileSync(cxx[0]!, [...cxx.slice(1), '-c', 'cuda/simt/simt.cc', '-o', `${exe}-simt.o`], { cwd: root, stdio: 'pipe' });
  execFileSync(cxx[0]!, [...cxx.slice(1), ...RACE_CHECK_FLAGS, '-c', 'test/simt/emulator_test.cc', '-o', `${exe}.o`],
    { cwd: root, stdio: 'pipe' });
  execFileSync(cxx[0]!, [`${exe}.o`, `${exe}-simt.o`, '-o', exe], { cwd: root, stdio: 'pipe' });
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
  // the race checker and the warp matrix and copy operations (cuda/warp_ops.cuh)
  'missing __syncthreads is reported as a shared-memory race',
  'ldmatrix x1, x2, x4, with and without .trans, give the documented fragments',
  'mma.sync m16n8k16 bf16 from ldmatrix matches a plain loop',
  'planted bug: B through ldmatrix .trans gives a visibly wrong product',
  'mma.sync m16n8k16 fp16 and m16n8k8 tf32 with documented fragments match plain loops',
  'tf32 conversion rounds to nearest, ties away from zero (cvt.rna)',
  'mma.sync in divergent code and at two call sites is reported',
  'cp.async ring with wait_group and barriers, forward', 'cp.async ring with wait_group and barriers, reverse',
  'cp.async ring with wait_group and barriers, shuffled',
  'planted bug: missing wait_group is reported (the copies are still in flight)',
  'planted bug: missing wait_group reads a stage before its copies land (checker off)',
  'planted bug: a stage overwritten before every thread is done with it is reported',
  'two-level reduction: right with its barrier, a reported race without',
  'a warp collective orders its lanes\' shared accesses; shared atomics are no race',
  'shared-memory bounds: writes past the dynamic window and ldmatrix from global memory',
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
