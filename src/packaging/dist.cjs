'use strict';
// `npm run build` (and prepack): compiles lib/ into dist/esm and dist/cjs with the project's
// TypeScript (resolved by path: a second TypeScript, installed to test the declarations, also
// provides a `tsc` bin), and copies the addon loader, which both builds share.
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..', '..');
const tsc = path.join(path.dirname(require.resolve('typescript/package.json', { paths: [root] })), 'bin', 'tsc');
const dist = path.join(root, 'dist');

fs.rmSync(dist, { recursive: true, force: true });
for (const project of ['tsconfig.json', 'tsconfig.cjs.json']) {
  try {
    execFileSync(process.execPath, [tsc, '-p', project], { cwd: root, stdio: 'inherit' });
  } catch {
    console.error(`cutloss: tsc -p ${project} failed (its errors are above)`);
    process.exit(1);
  }
}
fs.writeFileSync(path.join(dist, 'cjs', 'package.json'), '{"type":"commonjs"}\n');
for (const dir of ['esm', 'cjs']) {
  for (const file of ['native-loader.cjs', 'native-loader.d.cts']) {
    fs.copyFileSync(path.join(root, 'lib', file), path.join(dist, dir, file));
  }
}
fs.chmodSync(path.join(dist, 'esm', 'cli.js'), 0o755);
