// The kernels of cuda/sigmoid_pair.cu (sigmoidPairLoss) and cuda/zscore.cu (the spherical
// Z-loss) under the emulator in its three fiber orders: a race would make the result depend on
// the order. Both kernels have one owner per output (no atomics), so every order must give the
// same bits; each is also held to the js backend. Shapes leave partial 32-wide tiles.
import { afterAll, describe, expect, it } from 'vitest';
import * as lib from '../../lib/index.js';
import { emulatorOrder, setEmulatorOrder } from '../../lib/native.js';
import { expectClose } from '../helpers.js';
import * as ref from '../reference64.js';

const emu = lib.backends().find((b) => b.name === 'cuda-emu')!;
const initial = lib.getBackend();
const ORDERS = ['forward', 'reverse', 'shuffled'] as const;

describe.skipIf(!emu.available)('sigmoid_pair and zscore kernels in three fiber orders', () => {
  const saved = emu.available ? emulatorOrder() : null;
  afterAll(() => {
    if (saved !== null) setEmulatorOrder(saved.order, saved.seed);
    lib.setBackend(initial);
  });
  const rng = ref.mulberry32(41);
  const randn = (n: number, s: number) => Float32Array.from({ length: n }, () => ref.randn(rng) * s);
  const flat = (r: Record<string, unknown>) =>
    Object.values(r).flatMap((v) => (typeof v === 'number' ? [v] : v instanceof Float32Array ? Array.from(v)
      : v !== null && typeof v === 'object' && 'data' in v ? Array.from((v as lib.Tensor).data as Float32Array) : []));

  const cases: [string, () => Record<string, unknown>][] = [
    ['sigmoid_pair', (() => {
      const [N, D] = [45, 37];
      const x = lib.tensor(randn(N * D, 0.3), [N, D]);
      const y = lib.tensor(randn(N * D, 0.3), [N, D]);
      return () => lib.sigmoidPairLoss(x, y, { temperature: 3, bias: -2 }) as unknown as Record<string, unknown>;
    })()],
    ['zscore', (() => {
      const [N, D, V] = [33, 19, 70];
      const E = lib.tensor(randn(N * D, 1), [N, D]);
      const W = lib.tensor(randn(V * D, 0.5), [V, D]);
      const labels = Int32Array.from({ length: N }, (_, i) => (i * 11) % V);
      return () => lib.linearCrossEntropy(E, W, labels, { normalizer: 'zscore', zscore: { a: 1, b: 2 }, reduction: 'sum' }) as unknown as Record<string, unknown>;
    })()],
  ];
  for (const [kernel, call] of cases) {
    it(`${kernel}: the same bits in every order, and the js backend's result`, () => {
      lib.setBackend('cuda-emu');
      const runs = ORDERS.map((order) => {
        setEmulatorOrder(order, 7);
        return flat(call());
      });
      expect(runs[0]!.length).toBeGreaterThan(100); // loss and every gradient
      for (const r of runs.slice(1)) expect(r).toEqual(runs[0]);
      lib.setBackend('js');
      expectClose(runs[0]!, flat(call()), { rtol: 1e-4, atol: 1e-6, label: kernel });
    });
  }
});
