// Published dense peaks of common NVIDIA GPUs (vendor datasheets; tensor-core figures without
// sparsity), for "achieved TFLOP/s against the GPU's peak". Matched on the name nvidia-smi or
// the CUDA runtime reports; more specific names come first (H100 PCIe before H100).

export interface GpuPeak {
  /** What the table calls it. */
  model: string;
  /** TFLOP/s: bf16 tensor cores (fp32 accumulation), tf32 tensor cores, fp32 without tensor cores. */
  bf16: number | null;
  tf32: number | null;
  fp32: number;
  /** HBM/GDDR bandwidth, TB/s. */
  memoryTBps: number;
}

const PEAKS: [RegExp, GpuPeak][] = [
  [/GH200/i, { model: 'GH200', bf16: 989, tf32: 494, fp32: 67, memoryTBps: 4.0 }],
  [/H200/i, { model: 'H200', bf16: 989, tf32: 494, fp32: 67, memoryTBps: 4.8 }],
  [/H100.*PCIe/i, { model: 'H100 PCIe', bf16: 756, tf32: 378, fp32: 51, memoryTBps: 2.0 }],
  [/H100.*NVL/i, { model: 'H100 NVL', bf16: 835, tf32: 418, fp32: 60, memoryTBps: 3.9 }],
  [/H100/i, { model: 'H100 SXM', bf16: 989, tf32: 494, fp32: 67, memoryTBps: 3.35 }],
  [/A100.*80\s*GB/i, { model: 'A100 80GB', bf16: 312, tf32: 156, fp32: 19.5, memoryTBps: 2.0 }],
  [/A100/i, { model: 'A100 40GB', bf16: 312, tf32: 156, fp32: 19.5, memoryTBps: 1.56 }],
  [/L40S/i, { model: 'L40S', bf16: 362, tf32: 183, fp32: 91.6, memoryTBps: 0.86 }],
  [/\bL4\b/i, { model: 'L4', bf16: 121, tf32: 60, fp32: 30.3, memoryTBps: 0.3 }],
  [/\bA10\b/i, { model: 'A10', bf16: 125, tf32: 62.5, fp32: 31.2, memoryTBps: 0.6 }],
  [/RTX A6000/i, { model: 'RTX A6000', bf16: 155, tf32: 77, fp32: 38.7, memoryTBps: 0.77 }],
  [/RTX 4090/i, { model: 'GeForce RTX 4090', bf16: 165, tf32: 82.6, fp32: 82.6, memoryTBps: 1.0 }],
  [/RTX 3090/i, { model: 'GeForce RTX 3090', bf16: 71, tf32: 35.6, fp32: 35.6, memoryTBps: 0.94 }],
  [/V100/i, { model: 'V100', bf16: null, tf32: null, fp32: 15.7, memoryTBps: 0.9 }],
  [/\bT4\b/i, { model: 'T4', bf16: null, tf32: null, fp32: 8.1, memoryTBps: 0.32 }],
];

export function gpuPeak(name: string | null | undefined): GpuPeak | null {
  if (name === null || name === undefined) return null;
  return PEAKS.find(([re]) => re.test(name))?.[1] ?? null;
}

/** The peak that applies to a case's arithmetic: bf16 tensor cores for bf16 inputs, plain fp32 for f32 (cutloss's default, tf32 off). */
export function peakFor(peak: GpuPeak | null, dtype: 'f32' | 'bf16'): number | null {
  if (peak === null) return null;
  return dtype === 'bf16' ? peak.bf16 : peak.fp32;
}
