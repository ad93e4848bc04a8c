// The built package works through its exports map from both module systems.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
const node = (args: string[]) => execFileSync(process.execPath, args, { cwd: root, encoding: 'utf8' }).trim();
const program = `
  const x = { data: new Float32Array([1, 2, 3]), shape: [1, 3] };
  const r = m.crossEntropy(x, new Int32Array([0]));
  const auto = m.backends().find((b) => b.available && b.name !== 'cuda-emu').name;
  console.log(JSON.stringify([typeof m.linearCrossEntropy, r.loss.toFixed(6), m.getBackend() === auto, new m.CutlossError('E_SHAPE', 'x').code]));
`;
const expected = JSON.stringify(['function', '2.407606', true, 'E_SHAPE']);

describe('package exports', () => {
  it('import("cutloss") loads the ESM build', () => {
    expect(node(['--input-type=module', '-e', `import * as m from 'cutloss'; ${program}`])).toBe(expected);
  });
  it('require("cutloss") loads the CommonJS build', () => {
    expect(node(['--input-type=commonjs', '-e', `const m = require('cutloss'); ${program}`])).toBe(expected);
    expect(node(['-e', `console.log(require.resolve('cutloss'))`])).toMatch(/dist\/cjs\/index\.js$/);
  });
  it('ships type declarations for both', () => {
    expect(node(['-e', `const fs = require('fs'); console.log(['dist/esm/index.d.ts', 'dist/cjs/index.d.ts'].every((f) => fs.existsSync(f)))`])).toBe('true');
  });
});
