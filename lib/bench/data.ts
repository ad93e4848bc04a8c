// Benchmark inputs. Values come from a counter hash (murmur3's finalizer), so the Python peer
// (peers/torch_peer.py) builds bit-identical inputs from the same formula without a file in
// between, and the losses of the two can be compared.

/** murmur3's 32-bit finalizer. */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Uniform values of the given standard deviation: element i from fmix32(i + seed·0x9e3779b9). */
export function uniformValues(count: number, seed: number, std: number): Float32Array {
  const out = new Float32Array(count);
  const a = std * Math.sqrt(3);
  const offset = Math.imul(seed, 0x9e3779b9) >>> 0;
  for (let i = 0; i < count; i++) {
    const u = (fmix32((i + offset) >>> 0) >>> 8) * 2 ** -24; // [0, 1) on a 2^-24 grid
    out[i] = (2 * u - 1) * a;
  }
  return out;
}

export function labelValues(count: number, V: number, seed: number): Int32Array {
  const out = new Int32Array(count);
  const offset = Math.imul(seed, 0x9e3779b9) >>> 0;
  for (let i = 0; i < count; i++) out[i] = fmix32((i ^ offset) >>> 0) % V;
  return out;
}

/** bf16 bits of f32 values, rounded to nearest even (as torch's .to(torch.bfloat16)). */
export function toBf16(x: Float32Array): Uint16Array {
  const bits = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const b = bits[i]!;
    out[i] = (b + 0x7fff + ((b >>> 16) & 1)) >>> 16; // no NaNs here: inputs are finite
  }
  return out;
}
