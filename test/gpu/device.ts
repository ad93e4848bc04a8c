// The real-device suites run only where the cuda backend is available; elsewhere (every CI
// machine) they are skipped, and this says why, with backends()'s reason.
import { backends } from '../../lib/index.js';

export const cuda = backends().find((b) => b.name === 'cuda')!;

/** True when the suite runs; otherwise prints why it is skipped. */
export function onGpu(suite: string): boolean {
  if (!cuda.available) console.log(`${suite}: skipped, no usable CUDA device: ${cuda.reason}`);
  return cuda.available;
}
