// The CPU kernels compiled for each x86-64 instruction set (AVX-512, AVX2 + FMA, baseline SSE2)
// give the same results: test/cpu/isa_test.cc built three times with CUTLOSS_CPU_NO_CLONES and
// the production flags. The addon runs only the clone this CPU picks; this runs the others
// that users' CPUs pick. Results agree to fp32 rounding: differences come from the vector
// width (summation order) and from FMA contraction, which the baseline does not have.
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
const run = promisify(execFile);

const SOURCES = ['cross_entropy', 'rowwise', 'sparse', 'gumbel', 'linear_cross_entropy', 'kept_exp_avx512', 'gemm', 'parallel',
  'host_memory', 'bf16_gemm', 'bf16_gemm_avx512']
  .map((f) => `src/cpu/${f}.cc`);
// as CMakeLists.txt and binding.gyp compile the CPU kernels
const FLAGS = ['-O3', '-std=c++17', '-fno-math-errno', '-fno-trapping-math', '-fopenmp-simd', '--param=max-unswitch-insns=2000',
  '--param=max-unswitch-level=8', '-DCUTLOSS_CPU_NO_CLONES'];

function cpuFlags(): Set<string> {
  try {
    const line = readFileSync('/proc/cpuinfo', 'utf8').split('\n').find((l) => l.startsWith('flags'));
    return new Set((line ?? '').split(/\s+/));
  } catch {
    return new Set();
  }
}
const flags = cpuFlags();
const VARIANTS: { march: string; runs: boolean }[] = [
  { march: 'x86-64-v4', runs: ['avx512f', 'avx512bw', 'avx512dq', 'avx512vl'].every((f) => flags.has(f)) },
  { march: 'x86-64-v3', runs: ['avx2', 'fma', 'bmi2'].every((f) => flags.has(f)) },
  { march: 'x86-64', runs: true },
];

interface Block {
  name: string;
  scale: number;
  values: number[];
}

function parse(out: string): Block[] {
  const blocks: Block[] = [];
  for (const line of out.split('\n')) {
    if (line === '') continue;
    const m = /^(.*) scale=(\S+) (\d+)$/.exec(line);
    if (m !== null) blocks.push({ name: m[1]!, scale: Number(m[2]), values: [] });
    else blocks.at(-1)!.values.push(Number(line));
  }
  return blocks;
}

/** The largest difference in units of the allowed one (≤ 1 passes), with where it is. */
function worst(a: Block[], b: Block[]): { ratio: number; where: string } {
  let w = { ratio: 0, where: '' };
  a.forEach((blockA, k) => {
    const blockB = b[k]!;
    if (blockB.name !== blockA.name || blockB.values.length !== blockA.values.length) throw new Error(`block ${k} differs in shape`);
    const rowMax = Math.max(...blockA.values.filter(Number.isFinite).map(Math.abs), 0);
    // fp32 rounding of the row's inputs (scale = its largest |effective logit|) and of the sums
    const allowedAbs = (1e-6 + 8 * 2 ** -24 * blockA.scale) * rowMax;
    blockA.values.forEach((x, i) => {
      const y = blockB.values[i]!;
      if (Number.isNaN(x) || Number.isNaN(y) || !Number.isFinite(x) || !Number.isFinite(y)) {
        if (!Object.is(x, y) && !(Number.isNaN(x) && Number.isNaN(y))) w = { ratio: Infinity, where: `${blockA.name} [${i}]: ${x} vs ${y}` };
        return;
      }
      const ratio = Math.abs(x - y) / (allowedAbs + 1e-5 * Math.max(Math.abs(x), Math.abs(y)) + 1e-30);
      if (ratio > w.ratio) w = { ratio, where: `${blockA.name} [${i}]: ${x} vs ${y}` };
    });
  });
  return w;
}

describe.skipIf(process.arch !== 'x64' || process.platform !== 'linux')('CPU kernels on every x86-64 instruction set', () => {
  const outputs = new Map<string, Block[]>();
  beforeAll(async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'cutloss-isa-'));
    await Promise.all(VARIANTS.filter((v) => v.runs).map(async ({ march }) => {
      const exe = path.join(dir, `isa_${march}`);
      await run('g++', [...FLAGS, `-march=${march}`, 'test/cpu/isa_test.cc', ...SOURCES, '-o', exe, '-lpthread', '-ldl'], { cwd: root });
      const { stdout } = await run(exe, [], { maxBuffer: 256 * 2 ** 20 });
      outputs.set(march, parse(stdout));
    }));
  }, 600_000);

  const [widest, ...others] = VARIANTS.filter((v) => v.runs).map((v) => v.march);
  for (const march of others) {
    it(`${march} matches ${widest} to fp32 rounding on every op`, () => {
      const w = worst(outputs.get(widest!)!, outputs.get(march)!);
      console.log(`${march} vs ${widest}: largest difference ${w.ratio.toFixed(3)} of the allowed (${w.where})`);
      expect(w.ratio, w.where).toBeLessThanOrEqual(1);
    });
  }
  it('each build covers every op', () => {
    const names = new Set(outputs.get(widest!)!.map((b) => b.name.replace(/ row=\d+$/, '').split(' ')[0]));
    expect([...names].sort()).toEqual([
      'crossEntropy', 'entmax15', 'entmax15Backward', 'gumbelSoftmax', 'gumbelSoftmaxBackward', 'linearCrossEntropy',
      'logSoftmax', 'logSoftmaxBackward', 'logStablemax', 'logStablemaxBackward', 'logSumExp', 'softmax', 'softmaxBackward',
      'sparsemax', 'sparsemaxBackward', 'stablemax', 'stablemaxBackward',
    ]);
  });
});
