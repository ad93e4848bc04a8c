// S1-loop: crossEntropy forward+backward on S1's shape called in a training loop, per call, four
// ways in one process: (a) a synchronous loop taking fresh results, (b) a loop that awaits a
// turn of the event loop between calls (so finalizers hand the dropped results' memory back),
// (c) a synchronous loop writing into one reused output (options.out), (d) a synchronous loop
// writing dLogits into the logits (inPlace). (a) pays for fresh memory each call (a page fault
// per 4 KiB of a 500 MB dLogits); (c) and (d) should cost what (b) costs.
//   tsx lib/bench/loop-child.ts [--backend cpu] [--tiny] [--calls 7]   (prints a table, and @@LOOP <json>)

import * as lib from '../index.js';
import { labelValues, uniformValues } from './data.js';

export interface LoopResult {
  backend: string;
  N: number;
  V: number;
  calls: number;
  /** Median milliseconds per call of each loop. */
  ms: { fresh: number; awaited: number; out: number; inPlace: number };
  /** Each loop's median over the awaiting loop's (b): the target for out and inPlace is ≤ 1.2. */
  ratios: { fresh: number; out: number; inPlace: number };
}

const turn = () => new Promise<void>((resolve) => setImmediate(resolve));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

export async function measureLoop(backend: lib.BackendName, N: number, V: number, calls: number): Promise<LoopResult> {
  lib.setBackend(backend);
  const pristine = uniformValues(N * V, 1, 2);
  const labels = labelValues(N, V, 2);
  const x = lib.tensor(pristine.slice(), [N, V]);
  const gc = (globalThis as { gc?: () => void }).gc;
  const settle = async () => {
    gc?.();
    await turn();
    await turn();
  };
  /** Times `calls` calls after one untimed warm-up; `between` runs untimed after each. */
  const timed = async (call: () => unknown, between: () => Promise<void> | void): Promise<number> => {
    call();
    await between();
    const ms: number[] = [];
    for (let i = 0; i < calls; i++) {
      const t0 = performance.now();
      call();
      ms.push(performance.now() - t0);
      await between();
    }
    await settle();
    return median(ms);
  };

  await settle();
  const fresh = await timed(() => lib.crossEntropy(x, labels), () => undefined);
  const awaited = await timed(() => lib.crossEntropy(x, labels), turn);
  const out = lib.tensor(new Float32Array(N * V), [N, V]);
  const outMs = await timed(() => lib.crossEntropy(x, labels, { out: { dLogits: out } }), () => undefined);
  // in place: new logits into the same memory before each call, as a training step would write them
  const inPlace = await timed(() => lib.crossEntropy(x, labels, { inPlace: true }), () => {
    (x.data as Float32Array).set(pristine);
  });
  return {
    backend, N, V, calls,
    ms: { fresh, awaited, out: outMs, inPlace },
    ratios: { fresh: fresh / awaited, out: outMs / awaited, inPlace: inPlace / awaited },
  };
}

export function loopTable(r: LoopResult): string {
  const f = (ms: number) => `${ms.toFixed(1)} ms`;
  return [
    `S1-loop: crossEntropy fwd+bwd [${r.N}, ${r.V}] on ${r.backend}, median of ${r.calls} calls each`,
    `  (a) sync loop, fresh results       ${f(r.ms.fresh)}   (a)/(b) ${r.ratios.fresh.toFixed(2)}`,
    `  (b) loop awaiting between calls    ${f(r.ms.awaited)}`,
    `  (c) sync loop, options.out reused  ${f(r.ms.out)}   (c)/(b) ${r.ratios.out.toFixed(2)} (target <= 1.2)`,
    `  (d) sync loop, inPlace             ${f(r.ms.inPlace)}   (d)/(b) ${r.ratios.inPlace.toFixed(2)}`,
  ].join('\n');
}

/** The child process's entry (lib/bench/loop-child.ts). */
export async function loopMain(): Promise<void> {
  const args = process.argv.slice(2);
  const value = (flag: string) => {
    const i = args.indexOf(flag);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const backend = (value('--backend') ?? lib.getBackend()) as lib.BackendName;
  const tiny = args.includes('--tiny');
  const calls = Number(value('--calls') ?? 7);
  const [N, V] = tiny ? [64, 500] : [4096, 32000];
  const r = await measureLoop(backend, N, V, calls);
  console.log(loopTable(r));
  console.log(`@@LOOP ${JSON.stringify(r)}`);
}
