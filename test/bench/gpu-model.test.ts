// The GPU performance model's arithmetic and parsers (bench/gpu-model.ts), without nvcc: the
// model itself (`npm run bench:gpu-model`) compiles the kernels, which takes minutes here.
import { describe, expect, it } from 'vitest';
import { CASES, GPUS, backwardEstimate, forwardEstimate, mmaStepMix, parsePtxasLog, threeGemmSeconds } from '../../bench/gpu-model.js';

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
  it('the forward is never faster than its tensor time, and a heavier loop is slower', () => {
    const mix = { instructions: 234, mma: 32, ldmatrix: 12, cpAsync: 4, barriers: 1, epilogueInstructions: 5000 };
    const f = forwardEstimate(CASES[0]!, GPUS[0]!, { registers: 122, sharedBytes: 79872, mix });
    expect(f.blocksPerSm).toBe(2);
    expect(f.seconds).toBeGreaterThanOrEqual(f.parts.tensor!);
    const heavy = forwardEstimate(CASES[0]!, GPUS[0]!, { registers: 122, sharedBytes: 79872, mix: { ...mix, instructions: 2 * 234 } });
    expect(heavy.seconds).toBeGreaterThan(f.seconds);
    const b = backwardEstimate(CASES[0]!, GPUS[0]!, 36);
    expect(b.parts.atomics! * 1e3).toBeCloseTo((Math.ceil(8192 / 64) * 4000 * 2 * 64 * 2304 * 8) / 2e12 * 1e3, 6);
  });
});
