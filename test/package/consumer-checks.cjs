// Checks shared by the consumer scripts: the installed addon is the one expected, and the
// losses agree with closed forms and finite differences computed here in float64.
'use strict';

function fail(message) {
  throw new Error(message);
}

function checkAddon(info, expect) {
  const cpu = info.cpu;
  if (expect === 'js') {
    if (cpu.available) fail(`expected no addon, but cpu is available: ${cpu.reason}`);
    console.log(`no addon, as expected: ${cpu.reason}`);
    return;
  }
  if (!cpu.available) fail(`cpu backend unavailable: ${cpu.reason}`);
  if (!info['cuda-emu'].available) fail(`cuda-emu unavailable: ${info['cuda-emu'].reason}`);
  const addon = String(cpu.details.addon);
  const builtWithCuda = !/^built without CUDA/.test(info.cuda.reason);
  console.log(`addon: ${addon}; gemm: ${cpu.details.gemm}; cuda: ${info.cuda.reason}`);
  if (expect === 'prebuilt') {
    if (!addon.startsWith('prebuilds/')) fail(`expected the prebuilt addon, loaded ${addon}`);
    if (!/OpenBLAS/.test(String(cpu.details.gemm))) fail(`the prebuild has no OpenBLAS: ${cpu.details.gemm}`);
    if (!builtWithCuda) fail(`the prebuild has no CUDA part: ${info.cuda.reason}`);
  } else if (expect === 'cuda' || expect === 'no-cuda') {
    if (!addon.startsWith('build/')) fail(`expected an addon built from source, loaded ${addon}`);
    if (builtWithCuda !== (expect === 'cuda')) fail(`expected ${expect}, cuda says: ${info.cuda.reason}`);
  } else {
    fail(`CUTLOSS_EXPECT must be prebuilt, cuda, no-cuda or js, got ${expect}`);
  }
}

function checkLoss({ crossEntropy, linearCrossEntropy, softmax, tensor, CutlossError }) {
  // softmax([0, ln 3]) = [1/4, 3/4]
  const p = softmax(tensor(new Float32Array([0, Math.log(3)]), [1, 2])).data;
  if (Math.abs(p[0] - 0.25) > 1e-6 || Math.abs(p[1] - 0.75) > 1e-6) fail(`softmax gave ${Array.from(p)}`);

  // cross-entropy of one row: lse − z_t
  const z = [1, 2, 3];
  const lse = Math.log(z.reduce((s, v) => s + Math.exp(v), 0));
  const ce = crossEntropy(tensor(new Float32Array(z), [1, 3]), new Int32Array([0]));
  if (Math.abs(ce.loss - (lse - z[0])) > 1e-5) fail(`crossEntropy gave ${ce.loss}, expected ${lse - z[0]}`);

  // linearCrossEntropy's dE against central differences of a float64 loss
  const N = 3, D = 4, V = 5;
  const E = Float32Array.from({ length: N * D }, (_, i) => Math.sin(i + 1));
  const W = Float32Array.from({ length: V * D }, (_, i) => Math.cos(2 * i + 1));
  const labels = new Int32Array([4, 0, 2]);
  const loss64 = (e) => {
    let total = 0;
    for (let n = 0; n < N; n++) {
      const logits = [];
      for (let v = 0; v < V; v++) {
        let s = 0;
        for (let d = 0; d < D; d++) s += e[n * D + d] * W[v * D + d];
        logits.push(s);
      }
      const m = Math.max(...logits);
      total += m + Math.log(logits.reduce((a, x) => a + Math.exp(x - m), 0)) - logits[labels[n]];
    }
    return total / N;
  };
  const r = linearCrossEntropy(tensor(E, [N, D]), tensor(W, [V, D]), labels);
  if (Math.abs(r.loss - loss64(Array.from(E))) > 1e-5) fail(`linearCrossEntropy loss ${r.loss}, float64 ${loss64(Array.from(E))}`);
  for (let i = 0; i < N * D; i++) {
    const h = 1e-4;
    const up = Array.from(E); up[i] += h;
    const down = Array.from(E); down[i] -= h;
    const numeric = (loss64(up) - loss64(down)) / (2 * h);
    if (Math.abs(r.dEmbeddings.data[i] - numeric) > 1e-4) fail(`dEmbeddings[${i}] = ${r.dEmbeddings.data[i]}, numeric ${numeric}`);
  }

  // a bad label is a typed error
  try {
    crossEntropy(tensor(new Float32Array(z), [1, 3]), new Int32Array([7]));
    fail('an out-of-range label was accepted');
  } catch (e) {
    if (!(e instanceof CutlossError) || e.code !== 'E_LABEL') throw e;
  }
}

module.exports = { checkAddon, checkLoss };
