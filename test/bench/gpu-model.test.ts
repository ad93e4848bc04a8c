// The GPU performance model's arithmetic and parsers (bench/gpu-model.ts), without nvcc: the
// model itself (`npm run bench:gpu-model`) compiles the kernels, which takes minutes here.
import { describe, expect, it } from 'vitest';
import {
  CASES, GPUS, MMA_FORWARD, backwardEstimate, blocksPerSm, forwardEstimate, meanLogitOrder, mmaBackwardEstimate, mmaStepMix,
  orderSeconds,
  parsePtxasLog, skippedTiles, threeGemmSeconds, trainedLikeHead,
} from '../../bench/gpu-model.js';

const LOG = `ptxas info    : Compiling entry function '_ZN7cutloss3gpu24linearCeForwardMmaKernelINS0_7MmaBf16EEEvNS0_12LinearCeArgsE' for 'sm_80'
ptxas info    : Function properties for _ZN7cutloss3gpu24linearCeForwardMmaKernelINS0_7MmaBf16EEEvNS0_12LinearCeArgsE
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 122 registers, used 1 barriers, 600 bytes cmem[0]
ptxas info    : Compiling entry function '_Z1kv' for 'sm_90'
    16 bytes stack frame, 12 bytes spill stores, 20 bytes spill loads
ptxas info    : Used 128 registers, 4096 bytes smem, 400 bytes cmem[0]`;

const PTX = `
.visible .entry k(
$L__BB0_41:
	cp.async.wait_group 2;
	bar.sync 	0;
	cp.async.cg.shared.global [%r1], [%rd1], 16, %r2;
	cp.async.commit_group;
	ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%r3, %r4, %r5, %r6}, [%r7];
	mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f1, %f2, %f3, %f4}, {%r3, %r4, %r5, %r6}, {%r8, %r9}, {%f1, %f2, %f3, %f4};
	mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f1, %f2, %f3, %f4}, {%r3, %r4, %r5, %r6}, {%r8, %r9}, {%f1, %f2, %f3, %f4};
	@%p1 bra 	$L__BB0_43;
	shfl.sync.bfly.b32 %r10, %r11, 1, 31, -1;
	add.f32 %f5, %f5, %f6;
$L__BB0_43:
	@%p2 bra 	$L__BB0_41;
	ret;
}`;

describe('GPU performance model (a model, not a measurement)', () => {
  it('reads registers, stack and spills per kernel and architecture from ptxas -v', () => {
    const r = parsePtxasLog(LOG);
    expect(r.get('_ZN7cutloss3gpu24linearCeForwardMmaKernelINS0_7MmaBf16EEEvNS0_12LinearCeArgsE@sm_80')).toEqual(
      { registers: 122, stackBytes: 0, spillBytes: 0, staticSmem: 0 });
    expect(r.get('_Z1kv@sm_90')).toEqual({ registers: 128, stackBytes: 16, spillBytes: 32, staticSmem: 4096 });
  });
  it('splits the mma forward loop into its step and its epilogue', () => {
    const mix = mmaStepMix(PTX.split('\n'));
    expect(mix).toEqual({ instructions: 8, mma: 2, ldmatrix: 1, cpAsync: 1, barriers: 1, epilogueInstructions: 3 });
  });
  it('three GEMMs of the paper case take 3·2·N·V·D / peak: 92.9 ms on an A100', () => {
    const [t, t70] = threeGemmSeconds(CASES[0]!, GPUS[0]!);
    expect(t).toBeCloseTo((6 * 8192 * 256000 * 2304) / 312e12, 12);
    expect(t * 1e3).toBeCloseTo(92.9, 1);
    expect(t70).toBeCloseTo(t / 0.7, 12);
  });
  it('splits a nested k-loop from the epilogue of the class-tile loop around it', () => {
    const nested = `
$L__BB0_10:
	mov.u32 %r1, 0;
$L__BB0_11:
	cp.async.wait_group 2;
	bar.sync 	0;
	ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%r3, %r4, %r5, %r6}, [%r7+1024];
	mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f1, %f2, %f3, %f4}, {%r3, %r4, %r5, %r6}, {%r8, %r9}, {%f1, %f2, %f3, %f4};
	@%p1 bra 	$L__BB0_11;
	shfl.sync.bfly.b32 %r10, %r11, 1, 31, -1;
$L__BB0_12:
	add.f32 %f5, %f5, %f6;
	@%p3 bra 	$L__BB0_12;
	@%p2 bra 	$L__BB0_10;
	ret;`;
    expect(mmaStepMix(nested.split('\n'))).toEqual(
      { instructions: 5, mma: 1, ldmatrix: 1, cpAsync: 0, barriers: 1, epilogueInstructions: 4 });
  });
  it('counts resident blocks from registers per warp, shared memory and warps', () => {
    // 240 registers × 128 threads: 2 blocks in 64 Ki registers; 255 × 256 threads: 1
    expect(blocksPerSm(GPUS[0]!, 240, 128, MMA_FORWARD.sharedBytes)).toBe(2);
    expect(blocksPerSm(GPUS[0]!, 255, 256, 1024)).toBe(1);
    expect(blocksPerSm(GPUS[0]!, 64, 128, 80 * 1024)).toBe(2); // shared memory: 164 KiB holds two
    expect(blocksPerSm(GPUS[0]!, 32, 256, 0)).toBe(8); // 64 warps
  });
  it('the forward is never faster than its tensor time, and a heavier loop is slower', () => {
    const mix = { instructions: 234, mma: 32, ldmatrix: 12, cpAsync: 4, barriers: 1, epilogueInstructions: 5000 };
    const facts = { registers: 122, sharedBytes: 79872, threads: 256 };
    const f = forwardEstimate(CASES[0]!, GPUS[0]!, { ...facts, mix });
    expect(f.blocksPerSm).toBe(2);
    expect(f.seconds).toBeGreaterThanOrEqual(f.parts.tensor!);
    const heavy = forwardEstimate(CASES[0]!, GPUS[0]!, { ...facts, mix: { ...mix, instructions: 2 * 234 } });
    expect(heavy.seconds).toBeGreaterThan(f.seconds);
    // the same tile in 4 warps of 64 × 64: half the shared-memory reads per mma, half the warps issuing
    const wide = forwardEstimate(CASES[0]!, GPUS[0]!,
      { registers: 240, ...MMA_FORWARD, mix: { ...mix, instructions: 153, mma: 64, ldmatrix: 16 } });
    expect(wide.parts.smem!).toBeCloseTo(f.parts.smem! * (4 * 16 * 512 + 16384) / (8 * 12 * 512 + 16384), 12);
    expect(wide.parts.issue!).toBeLessThan(f.parts.issue!);
    const b = backwardEstimate(CASES[0]!, GPUS[0]!, 36);
    expect(b.parts.atomics! * 1e3).toBeCloseTo((Math.ceil(8192 / 64) * 4000 * 2 * 64 * 2304 * 8) / 2e12 * 1e3, 6);
  });
  it('flushing dE once per run of class tiles removes up to half the reductions, not the streamed operands', () => {
    const step = { instructions: 100, mma: 32, ldmatrix: 12, reductions: 0 };
    const f = { registers: 216, sharedBytes: 108544, logitStep: step, sliceStep: { ...step, ldmatrix: 48, reductions: 32 } };
    const [c, g] = [CASES[0]!, GPUS[0]!];
    const one = mmaBackwardEstimate(c, g, f);
    const all = mmaBackwardEstimate(c, g, f, 0, Infinity);
    const tiles = 64 * 2000;
    const streamed = (2 * tiles * 72 * 2 * 128 * 64) / g.l2;
    expect(one.parts.l2!).toBeCloseTo(streamed + (tiles * 2 * 128 * 2304 / 4) * 32 / g.l2, 9);
    expect(all.parts.l2!).toBeCloseTo(streamed + (tiles * 128 * 2304 / 4) * 32 / g.l2, 9);
    expect(mmaBackwardEstimate(c, g, f, 0, 2).seconds).toBeLessThan(one.seconds);
  });
  it('deterministic owners: four products per tile in two kernels that fill the GPU, partials streamed', () => {
    const step = { instructions: 100, mma: 32, ldmatrix: 12, reductions: 0 };
    const f = { registers: 228, sharedBytes: 150528, logitStep: step, sliceStep: { ...step, ldmatrix: 24 } };
    const [c, g] = [CASES[0]!, GPUS[0]!];
    const atomic = mmaBackwardEstimate(c, g, f, 0, 2);
    const rows = mmaBackwardEstimate(c, g, f, 0, 2, 'ownRows');
    const vocab = mmaBackwardEstimate(c, g, f, 0, 2, 'ownVocab');
    const nvd = c.N * c.V * c.D;
    expect(atomic.parts.tensor!).toBeCloseTo((6 * nvd) / g.bf16, 12);
    expect(rows.parts.tensor!).toBeCloseTo((4 * nvd) / g.bf16, 12);
    expect(vocab.parts.tensor!).toBeCloseTo((4 * nvd) / g.bf16, 12);
    // 64 row blocks × ⌈512 / 128⌉ = 4 splits, and 2000 class tiles: both more blocks than SMs
    const tiles = 64 * 2000;
    const stages = 72;
    // the logits stream both operands, the owners' D-slices one; a paired plain add costs what a reduction does
    const streamed = (tiles * stages * 3 * 128 * 64) / g.l2;
    const flushRmw = ((tiles / 2) * 128 * 2304 / 4) * 32 / g.l2;
    expect(rows.parts.l2!).toBeCloseTo(streamed + flushRmw, 9);
    expect(vocab.parts.l2!).toBeCloseTo(streamed + flushRmw, 9);
    // 108 blocks' accumulators (128 × 2304 fp32 each) exceed the 40 MiB L2: every flush reads and writes DRAM
    const inputs = (c.N + c.V) * c.D * 2;
    expect(vocab.parts.dram!).toBeCloseTo((inputs + (tiles / 2) * 128 * 2304 * 8) / g.hbm, 9);
    // dE adds the zeroing of 3 partials, the ordered sum's read of 4 and its write of 1
    expect(rows.parts.dram!).toBeCloseTo((inputs + (tiles / 2) * 128 * 2304 * 8 + 8 * c.N * c.D * 4) / g.hbm, 9);
  });
  it('measures skipped tiles on a trained-like head: the mean-logit order skips more than class ids do', () => {
    const h = trainedLikeHead(3, 128, 16, 4096);
    const order = meanLogitOrder(h);
    expect(Array.from(order).sort((a, b) => a - b)).toEqual(Array.from({ length: 4096 }, (_, i) => i));
    // descending mean logit, recomputed here in float64
    const mean = Array.from({ length: 16 }, (_, d) => h.E.filter((_, i) => i % 16 === d).reduce((a, v) => a + v, 0) / 128);
    const key = (c: number) => mean.reduce((a, m, d) => a + m * h.W[c * 16 + d]!, 0);
    for (let j = 1; j < 4096; j++) expect(key(order[j - 1]!)).toBeGreaterThanOrEqual(key(order[j]!) - 1e-9);
    const sorted = skippedTiles(h, order);
    const ids = skippedTiles(h, null);
    expect(sorted.visited).toBe(32);
    expect(ids.visited).toBe(32);
    expect(sorted.skipped).toBeGreaterThan(ids.skipped);
    expect(skippedTiles(h, order, 1e30).skipped).toBe(32);
    expect(skippedTiles(h, order, 0).skipped).toBe(0);
  });
  it('the vocabulary order costs at least one read of E and W', () => {
    const c = CASES[0]!;
    const t = orderSeconds(c, GPUS[0]!);
    expect(t).toBeGreaterThan(((c.N + c.V) * c.D * 2) / 2e12);
    expect(t).toBeLessThan(0.01 * threeGemmSeconds(c, GPUS[0]!)[0] * 10);
  });
});
