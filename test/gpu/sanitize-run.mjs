// A small linearCrossEntropy run on the cuda backend for compute-sanitizer (test/gpu/sanitize.sh):
// f32 and bf16, softmax and sparsemax (whose crowded rows take the Michelot passes), with
// gradients, deterministic mode, and an async call. Exits non-zero on a wrong or non-finite result.
import * as m from '../../dist/esm/index.js';

m.setBackend('cuda');
const [N, D, V] = [67, 72, 1000];
const rand = (n, seed, scale) => {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32 - 0.5) * scale);
};
const toBf16 = (x) => Uint16Array.from(new Uint32Array(x.buffer), (b) => (b + 0x7fff + ((b >>> 16) & 1)) >>> 16);
const labels = Int32Array.from({ length: N }, (_, i) => (i * 31) % V);
let failures = 0;
for (const dtype of ['f32', 'bf16']) {
  for (const normalizer of ['softmax', 'sparsemax']) {
    for (const deterministic of [false, true]) {
      const e = rand(N * D, 1, normalizer === 'sparsemax' ? 0.1 : 2);
      const w = rand(V * D, 2, 2);
      const E = m.upload(m.tensor(dtype === 'bf16' ? toBf16(e) : e, [N, D], dtype));
      const W = m.upload(m.tensor(dtype === 'bf16' ? toBf16(w) : w, [V, D], dtype));
      const r = m.linearCrossEntropy(E, W, labels, { normalizer, deterministic, bias: rand(V, 3, 1) });
      const a = await m.linearCrossEntropyAsync(E, W, labels, { normalizer, deterministic, bias: rand(V, 3, 1) });
      const ok = Number.isFinite(r.loss) && r.loss === a.loss;
      console.log(`${dtype} ${normalizer} deterministic=${deterministic}: loss ${r.loss} ${ok ? 'ok' : 'WRONG'}`);
      if (!ok) failures++;
      for (const t of [E, W, r.dEmbeddings, r.dClassifier, a.dEmbeddings, a.dClassifier]) t?.dispose();
    }
  }
}
process.exit(failures === 0 ? 0 : 1);
