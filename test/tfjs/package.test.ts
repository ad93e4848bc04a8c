// The built subpath exports: `cutloss/tfjs` and `cutloss/tfjs/layers` load through import and
// require (the package refers to itself by name from the repository root) and work with the
// user's own copy of @tensorflow/tfjs. npm test builds dist/ first.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '../helpers.js';

const program = (load: string) => `
  ${load}
  tf.setBackend('cpu');
  const E = tf.tensor2d([[1, 0], [0, 1], [1, 1]]);
  const W = tf.tensor2d([[1, 2], [3, -1], [0, 0.5]]);
  const y = tf.tensor1d([0, 1, 2], 'int32');
  const [dE] = tf.grads((e) => ct.linearCrossEntropy(e, W, y))([E]);
  const ref = tf.grads((e) => tf.losses.softmaxCrossEntropy(tf.oneHot(y, 3), tf.matMul(e, W, false, true)))([E])[0];
  const diff = tf.max(tf.abs(tf.sub(dE, ref))).dataSync()[0];
  console.log(JSON.stringify({ diff, layer: typeof ctl.FusedLinearCrossEntropy, compile: typeof ctl.compileWithIntegerLabels }));
`;

function run(args: string[]): { diff: number; layer: string; compile: string } {
  const out = execFileSync(process.execPath, args, { cwd: repoRoot, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  return JSON.parse(out.trim().split('\n').pop()!);
}

describe('cutloss/tfjs as a package subpath', () => {
  it('dist has the tfjs builds (run npm run build)', () => {
    for (const f of ['esm/tfjs/index.js', 'esm/tfjs/index.d.ts', 'cjs/tfjs/index.js', 'cjs/tfjs/layers.js']) {
      expect(existsSync(`${repoRoot}/dist/${f}`), `dist/${f}`).toBe(true);
    }
  });

  it('import', () => {
    const r = run(['--input-type=module', '-e', program(`
      import * as tf from '@tensorflow/tfjs'; import * as ct from 'cutloss/tfjs'; import * as ctl from 'cutloss/tfjs/layers';`)]);
    expect(r).toEqual({ diff: expect.any(Number), layer: 'function', compile: 'function' });
    expect(r.diff).toBeLessThan(1e-6);
  });

  it('require', () => {
    const r = run(['-e', program(`
      const tf = require('@tensorflow/tfjs'); const ct = require('cutloss/tfjs'); const ctl = require('cutloss/tfjs/layers');`)]);
    expect(r.layer).toBe('function');
    expect(r.diff).toBeLessThan(1e-6);
  });
});
