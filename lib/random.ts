// The seeded generator behind every reproducible input cutloss makes (doctor's checks, the
// benchmark's data, the demo's initialization): the same stream on every machine.

/** mulberry32: uniforms in [0, 1) from a 32-bit seed; small and fast, not for cryptography. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}
