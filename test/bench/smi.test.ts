// nvidia-smi's output as the benchmark reads it, on recordings in the formats drivers print
// (fixtures/smi/*.txt: N/A fields, several GPUs, MIG, an older driver), and the energy
// arithmetic on numbers worked out by hand.
import { mkdtempSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  FACT_FIELDS, parseCudaVersion, parseEnergy, parseFacts, parseSamples, queryGpuFacts, smiNumber, smiTimestamp,
  summarizeWindow, visibleGpuIndex, type SmiSample,
} from '../../lib/bench/smi.js';
import { gpuPeak } from '../../lib/bench/peaks.js';
import { repoRoot } from '../helpers.js';

const fixtures = path.join(repoRoot, 'test', 'bench', 'fixtures');

/** The "=== <query>" sections of a recording. */
function recording(name: string): Map<string, string> {
  const out = new Map<string, string>();
  let key: string | null = null;
  for (const line of readFileSync(path.join(fixtures, 'smi', name), 'utf8').split('\n')) {
    const m = /^=== (.*)$/.exec(line);
    if (m !== null) {
      key = m[1]!;
      out.set(key, '');
    } else if (key !== null) out.set(key, `${out.get(key)!}${line}\n`);
  }
  return out;
}

const FACTS_QUERY = `--query-gpu=${FACT_FIELDS.join(',')}`;
const SAMPLES_QUERY = '--query-gpu=timestamp,power.draw,utilization.gpu,utilization.memory,memory.used,clocks.sm,temperature.gpu';

describe('nvidia-smi cells', () => {
  it('reads numbers with and without units, and N/A in its spellings as null', () => {
    expect(smiNumber('700.00')).toBe(700);
    expect(smiNumber(' 81559 MiB')).toBe(81559);
    expect(smiNumber('80 GiB')).toBe(80 * 1024);
    expect(smiNumber('312.45 W')).toBe(312.45);
    expect(smiNumber('1980 MHz')).toBe(1980);
    expect(smiNumber('87 %')).toBe(87);
    for (const na of ['[N/A]', 'N/A', '[Not Supported]', '[Unknown Error]', '', 'Enabled']) expect(smiNumber(na)).toBeNull();
  });

  it('reads nvidia-smi timestamps to the millisecond', () => {
    const a = smiTimestamp('2024/03/13 10:21:33.512');
    const b = smiTimestamp('2024/03/13 10:21:34.017');
    expect(b - a).toBe(505);
    expect(new Date(a).getMinutes()).toBe(21);
    expect(smiTimestamp('Wed Mar 13 10:21:30 2024')).toBeNaN();
  });

  it('picks the GPU CUDA calls device 0', () => {
    expect(visibleGpuIndex({})).toBe(0);
    expect(visibleGpuIndex({ CUDA_VISIBLE_DEVICES: '3,1' })).toBe(3);
    expect(visibleGpuIndex({ CUDA_VISIBLE_DEVICES: 'GPU-5a1c' })).toBe(0);
  });
});

describe('recorded nvidia-smi outputs', () => {
  it('H100, driver 550: facts, CUDA version, samples, energy counter', () => {
    const r = recording('h100-sxm-driver550.txt');
    const [g] = parseFacts(r.get(FACTS_QUERY)!, FACT_FIELDS);
    expect(g).toEqual({
      index: 0, name: 'NVIDIA H100 80GB HBM3', driverVersion: '550.54.15', memoryTotalMiB: 81559, maxSmClockMHz: 1980,
      maxMemoryClockMHz: 2619, powerLimitW: 700, computeCapability: '9.0', migMode: 'Disabled',
    });
    expect(parseCudaVersion(r.get('nvidia-smi')!)).toBe('12.4');
    const s = parseSamples(r.get(SAMPLES_QUERY)!);
    expect(s).toHaveLength(8);
    expect(s[2]).toMatchObject({ powerW: 611.09, utilizationGpu: 100, utilizationMemory: 63, memoryUsedMiB: 6130, smClockMHz: 1980, temperatureC: 44 });
    expect(s[1]!.t - s[0]!.t).toBe(101);
    expect(parseEnergy(r.get('--query-gpu=total_energy_consumption')!)).toBe(81234567890);
    expect(gpuPeak(g!.name)).toMatchObject({ model: 'H100 SXM', bf16: 989 });
  });

  it('two A100s, one in MIG mode: one fact line per GPU, [N/A] utilization', () => {
    const r = recording('a100-mig-2gpu-driver535.txt');
    const gpus = parseFacts(r.get(FACTS_QUERY)!, FACT_FIELDS);
    expect(gpus.map((g) => [g.index, g.migMode, g.memoryTotalMiB])).toEqual([[0, 'Enabled', 40960], [1, 'Disabled', 40960]]);
    const s = parseSamples(r.get(SAMPLES_QUERY)!);
    expect(s.map((x) => x.utilizationGpu)).toEqual([null, null, null, null]);
    expect(s.map((x) => x.memoryUsedMiB)).toEqual([87, 2318, 4402, 4402]);
    expect(gpuPeak(gpus[0]!.name)?.model).toBe('A100 40GB');
    expect(gpuPeak('NVIDIA A100 80GB PCIe')?.model).toBe('A100 80GB');
    expect(gpuPeak('NVIDIA H100 PCIe')?.model).toBe('H100 PCIe');
    expect(gpuPeak('Some Future GPU')).toBeNull();
  });

  it('an older driver: no compute_cap, [N/A] MIG mode and energy counter', () => {
    const r = recording('rtx3090-driver470.txt');
    const fields = FACT_FIELDS.filter((f) => f !== 'compute_cap');
    const [g] = parseFacts(r.get(`--query-gpu=${fields.join(',')}`)!, fields);
    expect(g).toMatchObject({ name: 'NVIDIA GeForce RTX 3090', computeCapability: null, migMode: null, powerLimitW: 350 });
    expect(parseCudaVersion(r.get('nvidia-smi')!)).toBe('11.4');
    expect(parseEnergy(r.get('--query-gpu=total_energy_consumption')!)).toBeNull();
    expect(parseSamples(r.get(SAMPLES_QUERY)!)[0]!.utilizationMemory).toBeNull();
  });

  it('skips lines that are not samples', () => {
    const text = 'Failed to initialize NVML: Driver/library version mismatch\n\n2024/03/13 10:21:33.512, 118.32, 0, 0, 1210, 1980, 34\n';
    expect(parseSamples(text)).toHaveLength(1);
  });

  it('asks an older nvidia-smi again without the fields it refuses (the stand-in on PATH)', async () => {
    const env = { ...process.env };
    process.env.PATH = `${fixtures}${path.delimiter}${env.PATH}`;
    process.env.CUTLOSS_FAKE_SMI_RECORDING = path.join(fixtures, 'smi', 'rtx3090-driver470.txt');
    try {
      const r = await queryGpuFacts();
      expect(r.found).toBe(true);
      expect(r.unknownFields).toEqual(['compute_cap']);
      expect(r.cudaVersion).toBe('11.4');
      expect(r.gpus[0]!.name).toBe('NVIDIA GeForce RTX 3090');
      process.env.PATH = mkdtempSync(path.join(os.tmpdir(), 'no-smi-'));
      const none = await queryGpuFacts();
      expect(none).toMatchObject({ found: false, reason: 'nvidia-smi not found on PATH', gpus: [] });
    } finally {
      process.env.PATH = env.PATH;
      delete process.env.CUTLOSS_FAKE_SMI_RECORDING;
    }
  });
});

describe('energy arithmetic', () => {
  const t0 = Date.UTC(2024, 2, 13, 10, 0, 0);
  const sample = (dt: number, powerW: number | null, memoryUsedMiB: number | null): SmiSample => ({
    t: t0 + dt, powerW, utilizationGpu: 100, utilizationMemory: 50, memoryUsedMiB, smClockMHz: 1980, temperatureC: 50,
  });
  // one sample before the window (power 100 W) and three inside it
  const samples = [sample(-500, 100, 1000), sample(100, 600, 5000), sample(200, 650, 7000), sample(300, 700, 6000)];

  it('takes the energy counter difference when both readings exist', () => {
    const s = summarizeWindow({
      windowStartMs: t0, windowMs: 2000, tokens: 8192 * 10, samples,
      counterBeforeMJ: 81_234_567_890, counterAfterMJ: 81_235_867_890, memoryBeforeMiB: 1000,
    });
    expect(s.energySource).toBe('energy counter');
    expect(s.joules).toBe(1300); // 1 300 000 mJ
    expect(s.joulesPerToken).toBeCloseTo(1300 / 81920, 12);
    expect(s.tokensPerSecond).toBe(40960);
    expect(s.meanPowerW).toBe(650); // the samples inside the window only
    expect(s.windowSamples).toBe(3);
    expect(s.peakMemoryUsedMiB).toBe(7000); // over the whole case
    expect(s.peakMemoryRiseMiB).toBe(6000);
  });

  it('falls back to mean power × time without a counter, and says so', () => {
    const s = summarizeWindow({
      windowStartMs: t0, windowMs: 2000, tokens: 1000, samples, counterBeforeMJ: null, counterAfterMJ: null, memoryBeforeMiB: null,
    });
    expect(s.energySource).toBe('power × time');
    expect(s.joules).toBeCloseTo(650 * 2, 9);
    expect(s.joulesPerToken).toBeCloseTo(1.3, 9);
    expect(s.peakMemoryRiseMiB).toBeNull();
  });

  it('does not trust a counter that went backwards', () => {
    const s = summarizeWindow({
      windowStartMs: t0, windowMs: 1000, tokens: 10, samples, counterBeforeMJ: 5000, counterAfterMJ: 10, memoryBeforeMiB: null,
    });
    expect(s.energySource).toBe('power × time');
    expect(s.notes.join(' ')).toMatch(/backwards/);
  });

  it('gives no energy, with the reason, when nothing was sampled', () => {
    const s = summarizeWindow({
      windowStartMs: t0, windowMs: 1000, tokens: 10, samples: [], counterBeforeMJ: null, counterAfterMJ: null, memoryBeforeMiB: null,
    });
    expect(s.joules).toBeNull();
    expect(s.joulesPerToken).toBeNull();
    expect(s.notes.join(' ')).toMatch(/no nvidia-smi samples/);
  });

  it('uses every sample when none falls inside the window', () => {
    const s = summarizeWindow({
      windowStartMs: t0 + 60_000, windowMs: 500, tokens: 10, samples, counterBeforeMJ: null, counterAfterMJ: null, memoryBeforeMiB: null,
    });
    expect(s.meanPowerW).toBe((100 + 600 + 650 + 700) / 4);
    expect(s.notes.join(' ')).toMatch(/no sample fell inside/);
  });
});
