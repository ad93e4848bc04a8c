// One rank of the scale-out checks on cuda-emu DeviceTensors, started by
// test/mpi/scaleout.test.ts under mpirun. Every rank solves the whole problem with one device
// call (the reference), then its share with vocabParallel / dataParallel on device tensors, and
// compares loss, lse, dBias on the host and the gradients, which must come back as DeviceTensors
// on cuda-emu. Prints one RESULT line.
import {
  CutlossError, DeviceTensor, crossEntropy, crossEntropyAsync, download, linearCrossEntropy, linearCrossEntropyAsync,
  tensor, upload, type CrossEntropyOptions, type Tensor,
} from '../../lib/index.js';
import { mpiWorld } from '../../lib/mpi/index.js';
import * as ref from '../reference64.js';

const world = mpiWorld();
const failures: string[] = [];
let checks = 0;
const [N, D, V] = [5, 4, 13];
const emu = (t: Tensor) => upload(t, { backend: 'cuda-emu' });

function values(t: Tensor | DeviceTensor | Float32Array | number | undefined): Float64Array {
  if (t === undefined) return new Float64Array(0);
  if (typeof t === 'number') return Float64Array.of(t);
  if (t instanceof Float32Array) return Float64Array.from(t);
  const h = t instanceof DeviceTensor ? download(t) : t;
  if (h.dtype === 'bf16') return Float64Array.from(h.data as Uint16Array, ref.bf16ToF32);
  return Float64Array.from(h.data as Float32Array);
}

function close(what: string, got: ArrayLike<number>, want: ArrayLike<number>, tol: number): void {
  checks++;
  if (got.length !== want.length || got.length === 0) {
    failures.push(`${what}: length ${got.length} vs ${want.length}`);
    return;
  }
  let scale = 1;
  for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]!));
  for (let i = 0; i < got.length; i++) {
    if (!(Math.abs(got[i]! - want[i]!) <= tol * scale)) {
      failures.push(`${what}[${i}]: ${got[i]} vs ${want[i]}`);
      return;
    }
  }
}

function onEmu(what: string, t: unknown): void {
  checks++;
  if (!(t instanceof DeviceTensor) || t.backend !== 'cuda-emu') failures.push(`${what}: not a cuda-emu DeviceTensor`);
}

function code(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    return e instanceof CutlossError ? e.code : String(e);
  }
  return 'no error';
}

/** Rank r holds rows or classes [start, start + count) of `total`, unevenly. */
function split(total: number): [number, number] {
  const start = Math.floor((total * world.rank * (world.rank + 3)) / (world.size * (world.size + 3)));
  const end = Math.floor((total * (world.rank + 1) * (world.rank + 4)) / (world.size * (world.size + 3)));
  return [start, end - start];
}

function asTensor(v: Float32Array, shape: [number, number], dtype: 'f32' | 'bf16'): Tensor {
  return dtype === 'f32' ? tensor(v, shape) : tensor(Uint16Array.from(v, ref.f32ToBf16), shape, 'bf16');
}

const rng = ref.mulberry32(77);
const E = Float32Array.from(ref.randomRows(rng, N, D, 1).flat());
const W = Float32Array.from(ref.randomRows(rng, V, D, 1).flat());
const X = Float32Array.from(ref.randomRows(rng, N, V, 2).flat());
const bias = Float32Array.from(ref.randomRows(rng, 1, V, 0.5)[0]!);
const labels = Int32Array.from(ref.randomLabels(rng, N, V));
labels[1] = -100;
labels[N - 1] = V - 1;

async function checks_(dtype: 'f32' | 'bf16', async: boolean): Promise<void> {
  const tol = dtype === 'f32' ? 2e-5 : 1e-2;
  const tag = `${dtype}${async ? ' async' : ''}`;
  const lce = (a: DeviceTensor, b: DeviceTensor, t: Int32Array, o: object) =>
    async ? linearCrossEntropyAsync(a, b, t, o) : Promise.resolve(linearCrossEntropy(a, b, t, o));
  const ce = (a: DeviceTensor, t: Int32Array, o: object) =>
    async ? crossEntropyAsync(a, t, o) : Promise.resolve(crossEntropy(a, t, o));
  const o: CrossEntropyOptions = { labelSmoothing: 0.1, zLoss: 1e-3, returnLse: true };
  const Ed = emu(asTensor(E, [N, D], dtype));
  const Wd = emu(asTensor(W, [V, D], dtype));
  const full = await lce(Ed, Wd, labels, { ...o, bias });

  // vocabParallel, linear: this rank's classifier rows
  const [c0, nc] = split(V);
  const vocabParallel = { communicator: world, vocabStart: c0, vocabSize: V };
  const Wl = emu(asTensor(W.slice(c0 * D, (c0 + nc) * D), [nc, D], dtype));
  const sh = await lce(Ed, Wl, labels, { ...o, bias: bias.slice(c0, c0 + nc), vocabParallel });
  onEmu(`vocab linear ${tag} dE`, sh.dEmbeddings);
  onEmu(`vocab linear ${tag} dW`, sh.dClassifier);
  checks++;
  if (typeof sh.workspaceBytes !== 'number' || sh.workspaceBytes <= 0) failures.push(`vocab linear ${tag}: workspaceBytes ${sh.workspaceBytes}`);
  close(`vocab linear ${tag} loss`, values(sh.loss), values(full.loss), tol);
  close(`vocab linear ${tag} lse`, values(sh.lse), values(full.lse), tol);
  close(`vocab linear ${tag} dE`, values(sh.dEmbeddings), values(full.dEmbeddings), tol);
  close(`vocab linear ${tag} dW`, values(sh.dClassifier), values(full.dClassifier).subarray(c0 * D, (c0 + nc) * D), tol);
  close(`vocab linear ${tag} dBias`, values(sh.dBias), values(full.dBias).subarray(c0, c0 + nc), tol);

  // vocabParallel, dense: this rank's logit columns
  const Xd = emu(asTensor(X, [N, V], dtype));
  const fullCe = await ce(Xd, labels, o);
  const cols = new Float32Array(N * nc);
  for (let i = 0; i < N; i++) for (let j = 0; j < nc; j++) cols[i * nc + j] = X[i * V + c0 + j]!;
  const Xl = emu(asTensor(cols, [N, nc], dtype));
  const shCe = await ce(Xl, labels, { ...o, vocabParallel });
  onEmu(`vocab dense ${tag} dLogits`, shCe.dLogits);
  close(`vocab dense ${tag} loss`, values(shCe.loss), values(fullCe.loss), tol);
  close(`vocab dense ${tag} lse`, values(shCe.lse), values(fullCe.lse), tol);
  const want = values(fullCe.dLogits);
  const wantCols = new Float64Array(N * nc);
  for (let i = 0; i < N; i++) for (let j = 0; j < nc; j++) wantCols[i * nc + j] = want[i * V + c0 + j]!;
  close(`vocab dense ${tag} dLogits`, values(shCe.dLogits), wantCols, tol);

  // dataParallel, linear: this rank's rows; the ranks' dW and dBias add up to the whole batch's
  const [r0, nr] = split(N);
  const El = emu(asTensor(E.slice(r0 * D, (r0 + nr) * D), [nr, D], dtype));
  const dp = await lce(El, Wd, labels.slice(r0, r0 + nr), { ...o, bias, dataParallel: { communicator: world } });
  onEmu(`data ${tag} dE`, dp.dEmbeddings);
  onEmu(`data ${tag} dW`, dp.dClassifier);
  close(`data ${tag} loss`, values(dp.loss), values(full.loss), tol);
  close(`data ${tag} dE rows`, values(dp.dEmbeddings), values(full.dEmbeddings).subarray(r0 * D, (r0 + nr) * D), tol);
  const dW = Float64Array.from(values(dp.dClassifier));
  const dB = Float64Array.from(values(dp.dBias));
  world.allReduce(dW, 'sum');
  world.allReduce(dB, 'sum');
  close(`data ${tag} ΣdW`, dW, values(full.dClassifier), tol);
  close(`data ${tag} ΣdBias`, dB, values(full.dBias), tol);

  for (const r of [full, sh, fullCe, shCe, dp]) {
    for (const t of Object.values(r)) if (t instanceof DeviceTensor) t.dispose();
  }
  for (const t of [Ed, Wd, Wl, Xd, Xl, El]) t.dispose();
}

try {
  await checks_('f32', false);
  await checks_('f32', true);
  await checks_('bf16', false);
  // mistakes fail before any collective, alike on every rank
  const vocabParallel = { communicator: world, vocabStart: 0, vocabSize: V };
  const Ed = emu(tensor(E, [N, D]));
  const Wd = emu(tensor(W, [V, D]));
  checks++;
  if (code(() => linearCrossEntropy(Ed, tensor(W, [V, D]) as never, labels, { vocabParallel })) !== 'E_BACKEND') failures.push('device E, host W not E_BACKEND');
  checks++;
  if (code(() => linearCrossEntropy(tensor(E, [N, D]), Wd as never, labels, { vocabParallel })) !== 'E_BACKEND') failures.push('host E, device W not E_BACKEND');
  Wd.dispose();
  checks++;
  if (code(() => linearCrossEntropy(Ed, Wd, labels, { vocabParallel })) !== 'E_DISPOSED') failures.push('disposed W not E_DISPOSED');
  Ed.dispose();
  checks++;
  if (code(() => crossEntropy(Ed, labels, { dataParallel: { communicator: world } })) !== 'E_DISPOSED') failures.push('disposed logits not E_DISPOSED');
  checks++;
  await crossEntropyAsync(Ed, labels, { vocabParallel }).then(
    () => failures.push('async: disposed logits did not reject'),
    (e: unknown) => { if (!(e instanceof CutlossError) || e.code !== 'E_DISPOSED') failures.push(`async: ${String(e)}`); },
  );
} catch (e) {
  failures.push(`threw ${e instanceof Error ? e.stack : String(e)}`);
}

console.log(`RESULT ${JSON.stringify({ rank: world.rank, size: world.size, checks, failures: failures.slice(0, 20), failed: failures.length })}`);
process.exitCode = failures.length === 0 ? 0 : 1;
