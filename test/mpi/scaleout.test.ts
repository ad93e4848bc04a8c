// The sharded losses under real MPI: mpirun starts 2, 3 and 4 ranks of test/mpi/worker.ts
// (oversubscribed: more ranks than cores), each of which checks its share against the
// single-process result. Skipped, with the reason, where mpirun or the addon's MPI is absent;
// CI installs Open MPI.
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { backends } from '../../lib/index.js';
import { mpiStatus } from '../../lib/mpi/index.js';

const mpirun = spawnSync('mpirun', ['--version'], { encoding: 'utf8' });
const status = mpiStatus();
const skipReason = mpirun.error !== undefined
  ? 'mpirun is not on PATH (apt-get install openmpi-bin libopenmpi-dev)'
  : !status.available ? `MPI is unavailable: ${status.reason}` : null;
if (skipReason !== null) console.warn(`test/mpi/scaleout.test.ts skipped: ${skipReason}`);

function run(np: number, backends: string, dtypes: string, quick: boolean) {
  return runWorker(np, ['test/mpi/worker.ts', backends, dtypes, ...(quick ? ['quick'] : [])]);
}

function runWorker(np: number, worker: string[]) {
  const args = ['--allow-run-as-root', '--oversubscribe', '-np', String(np), process.execPath, '--import', 'tsx', ...worker];
  const r = spawnSync('mpirun', args, { encoding: 'utf8', timeout: 120_000, env: { ...process.env, OMPI_MCA_btl: 'self,vader' } });
  const results = (r.stdout ?? '').split('\n').filter((l) => l.startsWith('RESULT ')).map((l) => JSON.parse(l.slice(7)) as {
    rank: number; size: number; checks: number; failed: number; failures: string[];
  });
  return { r, results };
}

describe.skipIf(skipReason !== null)('vocabParallel and dataParallel under mpirun', () => {
  const runs: [np: number, backends: string, dtypes: string, quick: boolean][] = [
    [2, 'js,cpu', 'f32,bf16', false],
    [2, 'cuda-emu', 'f32,bf16', true],
    [3, 'cpu,js', 'f32,bf16', true],
    [4, 'cpu,cuda-emu', 'f32', true],
  ];
  it.each(runs)('mpirun -np %i on %s (%s, quick %s): every rank equals the single process', (np, backends, dtypes, quick) => {
    const { r, results } = run(np, backends, dtypes, quick);
    expect(results.map((x) => x.rank).sort(), `${r.stderr}\n${r.stdout}`).toEqual([...Array(np).keys()]);
    for (const x of results) {
      expect(x.size).toBe(np);
      expect(x.checks).toBeGreaterThan(50);
      expect(x.failures, `rank ${x.rank}`).toEqual([]);
    }
    expect(r.status).toBe(0);
  }, 120_000);
});

const emu = backends().find((b) => b.name === 'cuda-emu')!;
describe.skipIf(skipReason !== null || !emu.available)('vocabParallel and dataParallel on cuda-emu DeviceTensors', () => {
  it('mpirun -np 2: every rank equals the single-process device call, gradients on the device', () => {
    const { r, results } = runWorker(2, ['test/mpi/deviceWorker.ts']);
    expect(results.map((x) => x.rank).sort(), `${r.stderr}\n${r.stdout}`).toEqual([0, 1]);
    for (const x of results) {
      expect(x.checks).toBeGreaterThan(50);
      expect(x.failures, `rank ${x.rank}`).toEqual([]);
    }
    expect(r.status).toBe(0);
  }, 60_000);
});

describe.skipIf(skipReason !== null)('Partial FC (classSample) over vocabParallel', () => {
  it.each([2, 3])('mpirun -np %i: each rank samples its slice; the loss equals one process over the union of the samples', (np) => {
    const { r, results } = runWorker(np, ['test/mpi/classSampleWorker.ts', emu.available ? 'js,cpu,cuda-emu' : 'js,cpu']);
    expect(results.map((x) => x.rank).sort(), `${r.stderr}\n${r.stdout}`).toEqual([...Array(np).keys()]);
    for (const x of results) {
      expect(x.checks).toBeGreaterThan(20);
      expect(x.failures, `rank ${x.rank}`).toEqual([]);
    }
    expect(r.status).toBe(0);
  }, 120_000);
});
