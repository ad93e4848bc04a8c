// Fuzzes the addon's raw entry points in a child process (fuzz-child.mjs), so that a crash
// fails this test instead of taking the test runner down with it.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const child = fileURLToPath(new URL('./fuzz-child.mjs', import.meta.url));

interface FuzzSummary {
  calls: number;
  async: number;
  returned: Record<string, number>;
  errors: Record<string, number>;
  getterErrors: number;
  failures: string[];
}

const KERNEL_ENTRIES = [
  'logSumExp', 'softmax', 'softmaxBackward', 'stablemax', 'stablemaxBackward', 'sparsemax', 'sparsemaxBackward',
  'entmax15', 'entmax15Backward', 'gumbelSoftmax', 'gumbelSoftmaxBackward', 'crossEntropyForward', 'crossEntropyBackward',
  'linearCrossEntropy', 'linearCrossEntropyWorkspaceBytes',
  'cpuLogSumExp', 'cpuSoftmax', 'cpuSoftmaxBackward', 'cpuStablemax', 'cpuStablemaxBackward', 'cpuSparsemax',
  'cpuSparsemaxBackward', 'cpuEntmax15', 'cpuEntmax15Backward', 'cpuGumbelSoftmax', 'cpuGumbelSoftmaxBackward',
  'cpuCrossEntropy', 'cpuLinearCrossEntropy', 'cpuSgemm',
];

describe('native boundary fuzz', () => {
  for (const seed of [1, 2, 3]) {
    it(`survives 10000 random and malformed calls, inputs unchanged, nothing leaked (seed ${seed})`, () => {
      const r = spawnSync(process.execPath, [child, '10000', String(seed)], { encoding: 'utf8', timeout: 120_000 });
      expect(r.signal, `the fuzzed process died: ${r.stderr}`).toBeNull();
      const summary = JSON.parse(r.stdout.trim().split('\n').pop()!) as FuzzSummary;
      expect(summary.failures).toEqual([]);
      expect(r.status).toBe(0);
      expect(summary.calls).toBe(10000);
      // It reached every kernel with valid arguments, and the checks with invalid ones.
      // Each count is several times its bound at every seed, so a machine whose memory makes
      // a few random calls take another path still passes; the summary says what it reached.
      const reached = JSON.stringify(summary.returned);
      for (const name of KERNEL_ENTRIES) expect(summary.returned[name] ?? 0, `${name} in ${reached}`).toBeGreaterThan(10);
      for (const name of ['exportBuffer', 'importBuffer', 'address']) {
        expect(summary.returned[name] ?? 0, `${name} in ${reached}`).toBeGreaterThan(10);
      }
      expect(summary.returned.wrapPointer ?? 0, 'wrapPointer is only given addresses it must refuse').toBe(0);
      for (const code of ['E_SHAPE', 'E_DTYPE', 'E_DISPOSED', 'E_OPTION', 'E_BACKEND', 'E_LABEL', 'E_OOM']) {
        expect(summary.errors[code] ?? 0, code).toBeGreaterThan(0);
      }
      expect(summary.async).toBeGreaterThan(300);
    }, 150_000);
  }
});
