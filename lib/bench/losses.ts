// S2-losses and zscore-sweep: the newer losses beside the plain fused cross-entropy, all timed in
// one child process on one backend (forward + backward, f32, median of runs after a warm-up):
//   S2-losses    at S2's shape (N 2048, D 512, V 32000): linearCrossEntropy softmax (the
//                reference, 1.00×), generalizedCE q 0.7, normalizer 'gumbel', normalizer 'zscore', Partial FC
//                (classSample fraction 0.1: the loss over ~3.2k of the 32k classes), margin softmax
//                (logits kind 'cosine', ArcFace; alone and with Partial FC), harmonic logits
//                (kind 'harmonic', exponent √D), and
//                sigmoidPairLoss on x, y [N, D]; each as a ratio of the fused CE.
//   zscore-sweep the Z-loss against V (8k .. 256k) at N 2048, D 512: the call, and on cpu the
//                kernel's own clock of its classifier side (moments of W and dW: O(V·D²) per
//                call) and of its tokens (O(D²) each, whatever V is); per token = tokens / N.
//   tsx lib/bench/losses-child.ts [--backend cpu] [--tiny] [--quick] [--runs 3] [--groups S2-losses,zscore-sweep]

import * as lib from '../index.js';
import { native } from '../native.js';
import { cpuAddon } from '../cpuBackend.js';
import { labelValues, uniformValues } from './data.js';

export const LOSS_GROUPS = ['S2-losses', 'zscore-sweep'];

export interface LossesResult {
  backend: string;
  runs: number;
  shape: { N: number; D: number; V: number };
  /** S2-losses: median ms per call, and the ratio to the fused CE. */
  s2?: { name: string; ms: number; ratio: number }[];
  /** zscore-sweep: per V, the call and (cpu) the kernel's phases. */
  sweep?: { V: number; callMs: number; classifierMs: number | null; tokenMs: number | null; perTokenUs: number | null }[];
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

function time(runs: number, fn: () => unknown): number {
  fn(); // warm-up
  const ms: number[] = [];
  for (let r = 0; r < runs; r++) {
    const t0 = performance.now();
    fn();
    ms.push(performance.now() - t0);
  }
  return median(ms);
}

type Phased = { classifierMs: number; tokenMs: number };

export function measureLosses(backend: lib.BackendName, o: { tiny: boolean; quick: boolean; runs: number; groups: string[] }): LossesResult {
  lib.setBackend(backend);
  const [N, D, V] = o.tiny ? [32, 32, 500] : [2048, 512, 32000];
  const E = lib.tensor(uniformValues(N * D, 1, 1), [N, D]);
  const W = lib.tensor(uniformValues(V * D, 2, 0.05), [V, D]);
  const labels = labelValues(N, V, 3);
  const zs = { normalizer: 'zscore', zscore: { a: 1, b: 3 } } as const;
  const arcFace = { logits: { kind: 'cosine', scale: 64, angularMargin: 0.5 } } as const;
  const out: LossesResult = { backend, runs: o.runs, shape: { N, D, V } };
  if (o.groups.includes('S2-losses')) {
    const x = lib.tensor(uniformValues(N * D, 5, 0.05), [N, D]);
    const y = lib.tensor(uniformValues(N * D, 4, 0.05), [N, D]);
    const rows: [string, () => unknown][] = [
      ['linearCrossEntropy (softmax, fused)', () => lib.linearCrossEntropy(E, W, labels)],
      ['linearCrossEntropy generalizedCE q 0.7', () => lib.linearCrossEntropy(E, W, labels, { generalizedCE: 0.7 })],
      ["linearCrossEntropy normalizer 'gumbel'", () => lib.linearCrossEntropy(E, W, labels, { normalizer: 'gumbel' })],
      ["linearCrossEntropy normalizer 'zscore'", () => lib.linearCrossEntropy(E, W, labels, zs)],
      ['linearCrossEntropy classSample 0.1 (Partial FC)', () => lib.linearCrossEntropy(E, W, labels, { classSample: { fraction: 0.1, seed: 1 } })],
      ['linearCrossEntropy cosine (ArcFace s 64, m2 0.5)', () => lib.linearCrossEntropy(E, W, labels, arcFace)],
      ['linearCrossEntropy cosine + classSample 0.1 (Partial FC ArcFace)', () => lib.linearCrossEntropy(E, W, labels, { ...arcFace, classSample: { fraction: 0.1, seed: 1 } })],
      ['linearCrossEntropy harmonic (exponent √D)', () => lib.linearCrossEntropy(E, W, labels, { logits: { kind: 'harmonic' } })],
      [`sigmoidPairLoss x, y [${N}, ${D}]`, () => lib.sigmoidPairLoss(x, y, { temperature: 10, bias: -10 })],
    ];
    const ms = rows.map(([, fn]) => time(o.runs, fn));
    out.s2 = rows.map(([name], i) => ({ name, ms: ms[i]!, ratio: ms[i]! / ms[0]! }));
  }
  if (o.groups.includes('zscore-sweep')) {
    let vocabs = o.tiny ? [256, 512, 1024, 2048] : [8000, 16000, 32000, 64000, 128000, 256000];
    if (o.quick) vocabs = vocabs.filter((_, i) => i % 2 === 0 || i === vocabs.length - 1);
    const addon = backend === 'cpu' ? (cpuAddon(native().addon) as unknown as { cpuZscoreLinear?: (...a: unknown[]) => Phased } | null) : null;
    const phased = typeof addon?.cpuZscoreLinear === 'function';
    out.sweep = [];
    for (const v of vocabs) {
      const Wv = lib.tensor(uniformValues(v * D, 2, 0.05), [v, D]);
      const lab = labelValues(N, v, 3);
      const callMs = time(o.runs, () => lib.linearCrossEntropy(E, Wv, lab, zs));
      let classifierMs: number | null = null;
      let tokenMs: number | null = null;
      if (phased) {
        const rowScale = new Float32Array(N).fill(1 / N);
        const ph: Phased[] = [];
        for (let r = 0; r < o.runs; r++) ph.push(addon!.cpuZscoreLinear!(E.data, N, D, 0, Wv.data, v, 0, lab, null, 1, 3, -100, rowScale));
        classifierMs = median(ph.map((p) => p.classifierMs));
        tokenMs = median(ph.map((p) => p.tokenMs));
      }
      out.sweep.push({ V: v, callMs, classifierMs, tokenMs, perTokenUs: tokenMs === null ? null : (tokenMs / N) * 1000 });
    }
  }
  return out;
}

export function lossesTable(r: LossesResult): string {
  const lines: string[] = [];
  const { N, D, V } = r.shape;
  if (r.s2 !== undefined) {
    lines.push(`S2-losses on ${r.backend}: N ${N}, D ${D}, V ${V}, f32, forward + backward, median of ${r.runs}`);
    for (const row of r.s2) lines.push(`  ${row.name.padEnd(48)} ${row.ms.toFixed(1).padStart(9)} ms   ${row.ratio.toFixed(3)}× of CE`);
  }
  if (r.sweep !== undefined) {
    lines.push(`zscore-sweep on ${r.backend}: N ${N}, D ${D}` + (r.sweep[0]?.tokenMs !== null ? "; the cpu kernel's own phase clocks" : ''));
    lines.push('         V   call ms   classifier-side ms   tokens ms   per token µs');
    const f = (v: number | null, w: number, d = 1) => (v === null ? '-' : v.toFixed(d)).padStart(w);
    for (const s of r.sweep) lines.push(`  ${String(s.V).padStart(8)} ${f(s.callMs, 9)} ${f(s.classifierMs, 20)} ${f(s.tokenMs, 11)} ${f(s.perTokenUs, 14, 2)}`);
  }
  return lines.join('\n');
}

/** The child process's entry (lib/bench/losses-child.ts). */
export function lossesMain(): void {
  const args = process.argv.slice(2);
  const value = (flag: string) => {
    const i = args.indexOf(flag);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const backend = (value('--backend') ?? lib.getBackend()) as lib.BackendName;
  const groups = (value('--groups') ?? LOSS_GROUPS.join(',')).split(',');
  const r = measureLosses(backend, { tiny: args.includes('--tiny'), quick: args.includes('--quick'), runs: Number(value('--runs') ?? 3), groups });
  console.log(lossesTable(r));
  console.log(`@@LOSSES ${JSON.stringify(r)}`);
}
