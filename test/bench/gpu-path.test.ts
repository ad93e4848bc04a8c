// The GPU path of `cutloss bench` end to end without a GPU: cuda-emu at tiny sizes, with the
// stand-in nvidia-smi (fixtures/nvidia-smi) on PATH replaying a recording, so the facts query,
// the sampler, the energy arithmetic, the report and the charts all run. The expected joules
// come from the recording's counter readings, in the order the contestants read them.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseBenchArgs } from '../../lib/bench/cli.js';
import type { BenchReport } from '../../lib/bench/report.js';
import { repoRoot } from '../helpers.js';

const fixtures = path.join(repoRoot, 'test', 'bench', 'fixtures');

function recordedSection(name: string, query: string): string[] {
  const text = readFileSync(path.join(fixtures, 'smi', name), 'utf8');
  const start = text.indexOf(`=== ${query}\n`);
  const body = text.slice(start + query.length + 5);
  return body.slice(0, body.indexOf('===') < 0 ? undefined : body.indexOf('===')).split('\n').filter((l) => l.trim() !== '');
}

function bench(recording: string, cases: string): { report: BenchReport; out: string; stderr: string } {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'cutloss-bench-test-'));
  const out = path.join(dir, 'out');
  const r = spawnSync(process.execPath, [
    '--import', 'tsx', path.join(repoRoot, 'lib', 'cli.ts'), 'bench', '--backend', 'cuda-emu', '--cases', cases,
    '--runs', '1', '--energy-window', '150', '--json', '--out', out,
  ], {
    cwd: repoRoot, encoding: 'utf8', timeout: 60_000,
    env: {
      ...process.env, PATH: `${fixtures}${path.delimiter}${process.env.PATH ?? ''}`, NODE: process.execPath,
      CUTLOSS_FAKE_SMI_RECORDING: path.join(fixtures, 'smi', recording), CUTLOSS_FAKE_SMI_STATE: path.join(dir, 'state'),
      CUTLOSS_BACKEND: '',
    },
  });
  expect(r.status, r.stderr).toBe(0);
  return { report: JSON.parse(r.stdout) as BenchReport, out, stderr: r.stderr };
}

describe('cutloss bench on cuda-emu with a replayed nvidia-smi', () => {
  it('H100 recording: facts, samples, energy from the counter, report and charts', () => {
    const { report, out, stderr } = bench('h100-sxm-driver550.txt', 'sweep-V256,sweep-V512');
    expect(stderr).toMatch(/\[#+\.*\] \d+\/4/); // the progress bar
    expect(report.backend).toBe('cuda-emu');
    expect(report.gpu).toMatchObject({ found: true, cudaVersion: '12.4', sampledIndex: 0 });
    expect(report.gpu.gpus[0]!.name).toBe('NVIDIA H100 80GB HBM3');
    expect(report.gpu.peak?.model).toBe('H100 SXM');

    const counter = recordedSection('h100-sxm-driver550.txt', '--query-gpu=total_energy_consumption').map(Number);
    const power = recordedSection('h100-sxm-driver550.txt', '--query-gpu=timestamp,power.draw,utilization.gpu,utilization.memory,memory.used,clocks.sm,temperature.gpu')
      .map((l) => Number(l.split(', ')[1]));
    const rows = report.cases.flatMap((c) => c.rows.map((r) => ({ c: c.case, r })));
    expect(rows.map(({ c, r }) => `${c.name} ${r.contestant}`)).toEqual([
      'sweep-V256 cutloss', 'sweep-V256 materialized', 'sweep-V512 cutloss', 'sweep-V512 materialized',
    ]);
    rows.forEach(({ c, r }, k) => {
      const e = r.energy!;
      // each contestant reads the counter twice, around its window: readings 2k and 2k + 1
      expect(e.energySource).toBe('energy counter');
      expect(e.joules).toBeCloseTo((counter[2 * k + 1]! - counter[2 * k]!) / 1000, 9);
      expect(r.window!.tokens % c.N).toBe(0);
      expect(e.joulesPerToken).toBeCloseTo(e.joules! / r.window!.tokens, 12);
      expect(e.tokensPerSecond).toBeCloseTo(r.window!.tokens / (r.window!.windowMs / 1000), 6);
      expect(e.samples).toBeGreaterThan(0);
      expect(e.meanPowerW).toBeGreaterThanOrEqual(Math.min(...power));
      expect(e.meanPowerW).toBeLessThanOrEqual(Math.max(...power));
      expect(e.peakMemoryUsedMiB).toBeLessThanOrEqual(6130);
      expect(e.peakMemoryRiseMiB).toBe(e.peakMemoryUsedMiB! - 1210);
      expect(r.device!.infoSource).toBe('emulator');
      expect(r.device!.peakBytes).toBeGreaterThan(0);
      expect(r.peakFraction).toBeNull(); // emulator timings are never set against the GPU's peak
      expect(r.fwd!.medianMs).toBeGreaterThan(0);
    });
    // the materialized baseline holds the gradient of the N×V logits (bf16) at its peak
    for (const c of report.cases) {
      const m = c.rows.find((r) => r.contestant === 'materialized')!;
      expect(m.device!.peakBytes).toBeGreaterThanOrEqual(c.case.N * c.case.V * 2);
      expect(m.device!.inputBytes).toBeGreaterThanOrEqual(c.case.N * c.case.V * 2);
    }
    expect(report.peers.missing).toContainEqual({ peer: 'PyTorch, Cut Cross-Entropy, Liger', reason: expect.stringMatching(/real GPU only/) });

    const md = readFileSync(path.join(out, 'bench.md'), 'utf8');
    expect(md).toContain('| 0 (sampled) | NVIDIA H100 80GB HBM3 | 550.54.15 | 12.4 | 81559 MiB |');
    expect(md).toMatch(/mJ, \d+ W \(counter\)/);
    expect(md).toContain('## Left out');
    expect(JSON.parse(readFileSync(path.join(out, 'bench.json'), 'utf8')).charts.files).toEqual(['sweep-time.svg', 'sweep-memory.svg']);
    for (const f of ['sweep-time.svg', 'sweep-memory.svg']) {
      const svg = readFileSync(path.join(out, f), 'utf8');
      expect(svg.startsWith('<svg')).toBe(true);
      expect(svg).toContain('cutloss cuda-emu');
      expect(svg).toContain('materialized');
    }
  }, 60_000);

  it('an older driver without an energy counter: power × time, and the fields it lacks', () => {
    const { report, out } = bench('rtx3090-driver470.txt', 'sweep-V256');
    expect(report.gpu.unknownFields).toEqual(['compute_cap']);
    expect(report.gpu.peak?.model).toBe('GeForce RTX 3090');
    for (const r of report.cases[0]!.rows) {
      const e = r.energy!;
      expect(e.energySource).toBe('power × time');
      expect(e.joules).toBeCloseTo(e.meanPowerW! * (r.window!.windowMs / 1000), 9);
      expect(e.notes.join(' ')).toMatch(/total_energy_consumption/);
    }
    expect(readFileSync(path.join(out, 'bench.md'), 'utf8')).toMatch(/\(P×t\)/);
  }, 60_000);
});

describe('cutloss bench arguments', () => {
  it('reads every flag and refuses bad ones', () => {
    expect(parseBenchArgs(['--backend', 'cpu', '--cases=S1,sweep', '--quick', '--json', '--out', 'x', '--budget', '90', '--runs=3', '--no-peers'])).toMatchObject({
      backend: 'cpu', cases: ['S1', 'sweep'], quick: true, json: true, outDir: 'x', budgetSeconds: 90, runs: 3, peers: false,
    });
    expect(() => parseBenchArgs(['--backend', 'tpu'])).toThrow(/--backend must be one of/);
    expect(() => parseBenchArgs(['--cases', 'S9'])).toThrow(/unknown case/);
    expect(() => parseBenchArgs(['--runs', '0'])).toThrow(/positive integer/);
    expect(() => parseBenchArgs(['--frobnicate'])).toThrow(/unknown option/);
  });
});
