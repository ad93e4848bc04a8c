// The CPU backend's own expf, logf, log1pf, tanhf and expNonPositive (src/cpu/cpu_math.h),
// compiled with the host C++ compiler and swept against the C library in double precision
// (test/cpu/elementary_test.cc). Bounds are in ulps of float.
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));

function run(): Map<string, { maxUlp: number; failures: number }> {
  const exe = path.join(mkdtempSync(path.join(tmpdir(), 'cutloss-elementary-')), 'elementary_test');
  execFileSync('g++', ['-std=c++17', '-O2', '-Wall', '-Wextra', '-Werror', 'test/cpu/elementary_test.cc', '-o', exe],
    { cwd: root, stdio: 'pipe' });
  const lines = execFileSync(exe, { encoding: 'utf8' }).trim().split('\n');
  return new Map(lines.map((l) => {
    const [name, ulp, failures] = l.split(' ');
    return [name!, { maxUlp: Number(ulp), failures: Number(failures) }];
  }));
}

describe('CPU elementary functions', () => {
  const results = run();
  const bounds: [string, number][] = [['expf', 1], ['expNonPositive', 1], ['logf', 1], ['log1pf', 1.5], ['tanhf', 1.5]];
  for (const [name, bound] of bounds) {
    it(`${name}: within ${bound} ulp, special values and contract hold`, () => {
      const r = results.get(name);
      expect(r, name).toBeDefined();
      expect(r!.failures).toBe(0);
      expect(r!.maxUlp).toBeLessThanOrEqual(bound);
    });
  }
});
