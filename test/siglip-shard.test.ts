// sigmoidPairLoss with y sharded over ranks (yParallel) equals the single-process call: ranks
// are worker threads running the built package, joined by a Communicator over a
// SharedArrayBuffer; each holds x whole and an uneven slice of y.
import { Worker } from 'node:worker_threads';
import { afterAll, describe, expect, it } from 'vitest';
import { backends, getBackend, setBackend, sigmoidPairLoss, tensor, type BackendName } from '../lib/index.js';
import { distEntry, expectClose } from './helpers.js';
import { mulberry32 } from './reference64.js';

const names = backends().filter((b) => b.available && b.name !== 'cuda').map((b) => b.name) as BackendName[];
const initial = getBackend();
const built = await import(distEntry).then((m: Record<string, unknown>) => typeof m.sigmoidPairLoss === 'function', () => false);
afterAll(() => setBackend(initial));

interface RankResult { loss: number; dX: Float32Array; dY: Float32Array; dTemperature: number; dBias: number }

/** One rank: sigmoidPairLoss of the built package on its slice of y, over a SharedArrayBuffer communicator. */
const RANK = `
const { parentPort, workerData } = require('node:worker_threads');
const { rank, size, control, slots, slotLength, x, y, N, D, yStart, M, backend, entry } = workerData;
const ctrl = new Int32Array(control); // [generation, arrived]
const buf = new Float64Array(slots);
function barrier() {
  const generation = Atomics.load(ctrl, 0);
  if (Atomics.add(ctrl, 1, 1) === size - 1) {
    Atomics.store(ctrl, 1, 0);
    Atomics.add(ctrl, 0, 1);
    Atomics.notify(ctrl, 0);
  } else {
    while (Atomics.load(ctrl, 0) === generation) Atomics.wait(ctrl, 0, generation);
  }
}
const communicator = {
  rank, size,
  allReduce(data, op) {
    for (let k = 0; k < data.length; k++) buf[rank * slotLength + k] = data[k];
    barrier();
    for (let k = 0; k < data.length; k++) {
      let v = op === 'sum' ? 0 : -Infinity;
      for (let r = 0; r < size; r++) v = op === 'sum' ? v + buf[r * slotLength + k] : Math.max(v, buf[r * slotLength + k]);
      data[k] = v;
    }
    barrier(); // everyone has read the slots before they are reused
  },
};
import(entry).then((m) => {
  m.setBackend(backend);
  const r = m.sigmoidPairLoss(m.tensor(x, [N, D]), m.tensor(y.slice(yStart * D, (yStart + M) * D), [M, D]),
    { temperature: 6, bias: -3, yParallel: { communicator, yStart } });
  parentPort.postMessage({ loss: r.loss, dX: r.dX.data, dY: r.dY.data, dTemperature: r.dTemperature, dBias: r.dBias });
});`;

function runRanks(backend: BackendName, x: Float32Array, y: Float32Array, N: number, D: number, splits: number[]): Promise<RankResult[]> {
  const size = splits.length;
  const slotLength = N * D + 8;
  const control = new SharedArrayBuffer(8);
  const slots = new SharedArrayBuffer(size * slotLength * 8);
  let yStart = 0;
  return Promise.all(splits.map((M, rank) => {
    const data = { rank, size, control, slots, slotLength, x, y, N, D, yStart, M, backend, entry: distEntry };
    yStart += M;
    return new Promise<RankResult>((resolve, reject) => {
      const w = new Worker(RANK, { eval: true, workerData: data });
      w.once('message', (m: RankResult) => { resolve(m); void w.terminate(); });
      w.once('error', reject);
    });
  }));
}

describe.skipIf(!built).each(names)('sigmoidPairLoss yParallel on %s (built package; npm test builds it)', (name) => {
  it('3 ranks with uneven slices of y equal the single process', { timeout: 120_000 }, async () => {
    const [N, D] = [40, 7];
    const rng = mulberry32(9);
    const x = Float32Array.from({ length: N * D }, () => rng() - 0.5);
    const y = Float32Array.from({ length: N * D }, () => rng() - 0.5);
    setBackend(name);
    const whole = sigmoidPairLoss(tensor(x, [N, D]), tensor(y, [N, D]), { temperature: 6, bias: -3 });
    const splits = [9, 17, 14];
    const ranks = await runRanks(name, x, y, N, D, splits);
    let at = 0;
    for (const [rank, r] of ranks.entries()) {
      expect(Math.abs(r.loss - whole.loss)).toBeLessThan(1e-6 * Math.abs(whole.loss));
      expect(Math.abs(r.dTemperature - whole.dTemperature!)).toBeLessThan(1e-5 * Math.max(1, Math.abs(whole.dTemperature!)));
      expect(Math.abs(r.dBias - whole.dBias!)).toBeLessThan(1e-5 * Math.max(1, Math.abs(whole.dBias!)));
      expectClose(r.dX, whole.dX!.data as Float32Array, { rtol: 1e-5, atol: 1e-7, label: `rank ${rank} dX` });
      const mine = (whole.dY!.data as Float32Array).subarray(at * D, (at + splits[rank]!) * D);
      expectClose(r.dY, mine, { rtol: 1e-5, atol: 1e-7, label: `rank ${rank} dY` });
      at += splits[rank]!;
    }
  });
});
