// Bad input gets a CutlossError with a stable code and a message naming the argument;
// inputs are never modified.
import { describe, expect, it } from 'vitest';
import {
  CutlossError, crossEntropy, crossEntropyAsync, gumbelSoftmax, gumbelSoftmaxBackward, linearCrossEntropy,
  logSumExp, softmax, softmaxBackward, tensor,
} from '../lib/index.js';
import { codeOf } from './helpers.js';

const logits = () => ({ data: new Float32Array([1, 2, 3, 4, 5, 6]), shape: [2, 3] as [number, number] });

describe('shape and dtype errors', () => {
  it('rejects a shape that does not match the data', () => {
    expect(codeOf(() => softmax({ data: new Float32Array(5), shape: [2, 3] }))).toBe('E_SHAPE');
    expect(codeOf(() => softmax({ data: new Float32Array(0), shape: [0] }))).toBe('E_SHAPE');
    expect(codeOf(() => softmax({ data: new Float32Array(6), shape: [2, 3, 1] as never }))).toBe('E_SHAPE');
    expect(codeOf(() => softmax({ data: new Float32Array(6), shape: [2.5, 3] as never }))).toBe('E_SHAPE');
    expect(codeOf(() => softmax(null as never))).toBe('E_SHAPE');
  });
  it('rejects wrong dtypes', () => {
    expect(codeOf(() => softmax({ data: new Float64Array(6) as never, shape: [2, 3] }))).toBe('E_DTYPE');
    expect(codeOf(() => softmax({ data: new Float32Array(6), shape: [2, 3], dtype: 'bf16' }))).toBe('E_DTYPE');
    expect(codeOf(() => softmax({ data: new Uint16Array(6), shape: [2, 3], dtype: 'f32' }))).toBe('E_DTYPE');
    expect(codeOf(() => softmax({ data: new Float32Array(6), shape: [2, 3], dtype: 'f16' as never }))).toBe('E_DTYPE');
    expect(codeOf(() => crossEntropy(logits(), new Float32Array([0, 1]) as never))).toBe('E_DTYPE');
  });
  it('names the argument and the expected vs actual value', () => {
    expect(() => softmax({ data: new Float32Array(5), shape: [2, 3] })).toThrow(/softmax: x: shape \[2, 3\] needs 6 elements, data has 5/);
    expect(() => crossEntropy(logits(), new Int32Array([0, 7]))).toThrow(/labels\[1\] = 7 is outside \[0, 3\)/);
    expect(() => softmax(logits(), { temperature: -1 })).toThrow(/temperature must be a finite number > 0, got -1/);
  });
  it('checks D of linearCrossEntropy and the mask length', () => {
    const E = tensor(new Float32Array(6), [2, 3]);
    const W = tensor(new Float32Array(8), [4, 2]);
    expect(codeOf(() => linearCrossEntropy(E, W, new Int32Array([0, 1])))).toBe('E_SHAPE');
    expect(codeOf(() => softmax(logits(), { mask: new Uint8Array(4) }))).toBe('E_SHAPE');
    expect(codeOf(() => softmax(logits(), { mask: [1, 1, 1] as never }))).toBe('E_DTYPE');
    expect(codeOf(() => softmaxBackward(logits(), tensor(new Float32Array(3), [3])))).toBe('E_SHAPE');
  });
});

describe('label errors', () => {
  it('rejects labels out of range, of the wrong length, and anything but an Int32Array', () => {
    expect(codeOf(() => crossEntropy(logits(), new Int32Array([0, 3])))).toBe('E_LABEL');
    expect(codeOf(() => crossEntropy(logits(), new Int32Array([-1, 0])))).toBe('E_LABEL');
    expect(codeOf(() => crossEntropy(logits(), [0, 1.5] as never))).toBe('E_DTYPE');
    expect(codeOf(() => crossEntropy(logits(), new Int32Array([0])))).toBe('E_SHAPE');
  });
  it('accepts ignoreIndex anywhere, including a custom one', () => {
    expect(() => crossEntropy(logits(), new Int32Array([-100, 1]))).not.toThrow();
    expect(() => crossEntropy(logits(), new Int32Array([-5, 1]), { ignoreIndex: -5 })).not.toThrow();
    expect(codeOf(() => crossEntropy(logits(), new Int32Array([-100, 1]), { ignoreIndex: -5 }))).toBe('E_LABEL');
  });
});

describe('option errors', () => {
  const bad: [string, Record<string, unknown>][] = [
    ['negative temperature', { temperature: -1 }],
    ['zero temperature', { temperature: 0 }],
    ['labelSmoothing = 1', { labelSmoothing: 1 }],
    ['negative labelSmoothing', { labelSmoothing: -0.1 }],
    ['softcap = 0', { softcap: 0 }],
    ['negative softcap', { softcap: -3 }],
    ['NaN zLoss', { zLoss: NaN }],
    ['negative focalGamma', { focalGamma: -1 }],
    ['unknown reduction', { reduction: 'avg' }],
    ['unknown normalizer', { normalizer: 'entmax' }],
    ['non-boolean squentropy', { squentropy: 1 }],
    ['gradScale array with mean', { gradScale: new Float32Array(2) }],
    ['misspelled option', { labelSmothing: 0.1 }],
    ['bias on crossEntropy', { bias: new Float32Array(3) }],
  ];
  for (const [what, options] of bad) {
    it(`rejects ${what}`, () => {
      expect(codeOf(() => crossEntropy(logits(), new Int32Array([0, 1]), options as never))).toBe('E_OPTION');
    });
  }
  it('checks vector options against V and N', () => {
    expect(codeOf(() => crossEntropy(logits(), new Int32Array([0, 1]), { classWeights: new Float32Array(2) }))).toBe('E_SHAPE');
    expect(codeOf(() => crossEntropy(logits(), new Int32Array([0, 1]), { reduction: 'none', gradScale: new Float32Array(3) }))).toBe('E_SHAPE');
    const E = tensor(new Float32Array(4), [2, 2]);
    const W = tensor(new Float32Array(6), [3, 2]);
    expect(codeOf(() => linearCrossEntropy(E, W, new Int32Array([0, 1]), { bias: new Float32Array(2) }))).toBe('E_SHAPE');
    expect(codeOf(() => linearCrossEntropy(E, W, new Int32Array([0, 1]), { filterEps: -1 }))).toBe('E_OPTION');
  });
  it('requires the seed in gumbelSoftmaxBackward and validates it', () => {
    expect(codeOf(() => gumbelSoftmaxBackward(logits(), logits(), {} as never))).toBe('E_OPTION');
    expect(codeOf(() => gumbelSoftmax(logits(), { seed: -1 }))).toBe('E_OPTION');
    expect(codeOf(() => gumbelSoftmax(logits(), { seed: 1.5 }))).toBe('E_OPTION');
    expect(codeOf(() => gumbelSoftmax(logits(), { tau: 0 }))).toBe('E_OPTION');
  });
  it('rejects async misuse through the promise, not by throwing', async () => {
    const p = crossEntropyAsync(logits(), new Int32Array([0, 9]));
    await expect(p).rejects.toMatchObject({ code: 'E_LABEL' });
  });
});

describe('inputs are never modified', () => {
  it('leaves every argument byte-identical', () => {
    const E = tensor(Float32Array.from({ length: 12 }, (_, i) => Math.sin(i)), [3, 4]);
    const W = tensor(Float32Array.from({ length: 20 }, (_, i) => Math.cos(i)), [5, 4]);
    const labels = new Int32Array([4, -100, 0]);
    const bias = new Float32Array([0.1, -0.2, 0.3, 0, 1]);
    const classWeights = new Float32Array([1, 2, 3, 4, 5]);
    const before = [E.data, W.data, labels, bias, classWeights].map((a) => Buffer.from(a.buffer.slice(0)));
    linearCrossEntropy(E, W, labels, { bias, classWeights, labelSmoothing: 0.1, softcap: 5, zLoss: 1e-3 });
    crossEntropy(E, new Int32Array([1, 2, 3]), { temperature: 2 });
    softmax(E, { mask: new Uint8Array([1, 0, 1, 1]) });
    logSumExp(W);
    const after = [E.data, W.data, labels, bias, classWeights].map((a) => Buffer.from(a.buffer));
    after.forEach((b, i) => expect(b.equals(before[i]!)).toBe(true));
  });
});
