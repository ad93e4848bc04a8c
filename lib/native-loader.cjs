'use strict';
// Loads the cutloss addon with node-gyp-build from the package root: build/Release (built at
// install) or prebuilds/. This file runs from lib/ (sources, under vitest), dist/esm and
// dist/cjs alike, so it finds the root by walking up to cutloss's own package.json.
// CUTLOSS_ADDON=<file.node> loads that file instead (the sanitizer builds of test/sanitize).
const fs = require('node:fs');
const path = require('node:path');

function packageRoot(start) {
  for (let dir = start; ; dir = path.dirname(dir)) {
    try {
      if (JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).name === 'cutloss') return dir;
    } catch {
      // no package.json here, or not JSON (dist/cjs has its own, named nothing)
    }
    if (path.dirname(dir) === dir) return null;
  }
}

function loadAddon() {
  const root = packageRoot(__dirname);
  if (root === null) return { addon: null, root: null, file: null, error: `no cutloss package.json above ${__dirname}` };
  try {
    const build = require('node-gyp-build');
    const file = process.env.CUTLOSS_ADDON ? path.resolve(process.env.CUTLOSS_ADDON) : build.path(root);
    return { addon: require(file), root, file: path.relative(root, file), error: null };
  } catch (e) {
    const message = (e instanceof Error ? e.message : String(e)).split('\n')[0];
    const report = installReport(root);
    return { addon: null, root, file: null, error: report === null ? message : `${message}; at install: ${report}` };
  }
}

/** What the install step said (src/packaging/install.cjs), which tells why no addon is there. */
function installReport(root) {
  try {
    return fs.readFileSync(path.join(root, 'build', 'install-report.txt'), 'utf8').trim().replace(/^cutloss: /, '');
  } catch {
    return null;
  }
}

/** cutloss's own package.json fields, for `cutloss doctor` and error messages. */
function packageInfo() {
  const root = packageRoot(__dirname);
  if (root === null) return { root: null, version: 'unknown' };
  return { root, version: JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).version };
}

module.exports = { loadAddon, packageInfo };
