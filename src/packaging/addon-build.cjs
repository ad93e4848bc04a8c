#!/usr/bin/env node
'use strict';
// Builds the cutloss addon from source into build/Release/cutloss.node: with cmake-js
// (CMakeLists.txt: the binding, the emulated kernels and the CUDA part) when nvcc is on PATH,
// else with node-gyp (binding.gyp: the same addon without the CUDA part). One place decides,
// for `npm run build:native`, the install step (src/packaging/install.cjs) and prebuildify.
//
//   node src/packaging/addon-build.cjs            incremental build (development)
//   node src/packaging/addon-build.cjs rebuild …  clean build of the whole addon, for a prebuild:
//                                             prebuildify calls this file in node-gyp's place
//                                             (its node-gyp arguments are ignored); fails unless
//                                             the CUDA part and OpenBLAS are both in the result
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..', '..');

/** The first directory on PATH holding an executable `name`, or null. */
function onPath(name, env = process.env) {
  for (const dir of (env.PATH || '').split(path.delimiter)) {
    if (dir === '') continue;
    const file = path.join(dir, name);
    try {
      fs.accessSync(file, fs.constants.X_OK);
      if (fs.statSync(file).isFile()) return file;
    } catch {
      // not here
    }
  }
  return null;
}

/** A C++ compiler on PATH (what both node-gyp and cmake-js need), or null. */
function cxxCompiler(env = process.env) {
  if (env.CXX) return onPath(env.CXX, env) || (fs.existsSync(env.CXX) ? env.CXX : null);
  for (const name of ['c++', 'g++', 'clang++']) {
    const found = onPath(name, env);
    if (found !== null) return found;
  }
  return null;
}

/** nvcc on PATH unless CUTLOSS_CUDA=0 asks for a build without the CUDA part. */
function nvcc(env = process.env) {
  return env.CUTLOSS_CUDA === '0' ? null : onPath('nvcc', env);
}

/**
 * Node's headers where they are installed beside Node (official tarballs: <prefix>/include/node;
 * Debian: /usr/include/node), so that neither node-gyp nor cmake-js downloads them.
 */
function localNodeDir() {
  const candidates = [path.resolve(path.dirname(process.execPath), '..'), '/usr', '/usr/local'];
  return candidates.find((dir) => fs.existsSync(path.join(dir, 'include', 'node', 'node_api.h'))) ?? null;
}

function buildEnv() {
  const env = { ...process.env };
  if (!env.npm_config_nodedir) {
    const dir = localNodeDir();
    if (dir !== null) env.npm_config_nodedir = dir;
  }
  return env;
}

/** node-gyp: the one npm ships (npm sets npm_config_node_gyp for scripts), else one on PATH. */
function nodeGypCommand(env) {
  if (env.npm_config_node_gyp && fs.existsSync(env.npm_config_node_gyp)) {
    return [process.execPath, env.npm_config_node_gyp];
  }
  try {
    return [process.execPath, require.resolve('node-gyp/bin/node-gyp.js', { paths: [root] })];
  } catch {
    return ['node-gyp'];
  }
}

function cmakeJsCommand() {
  return [process.execPath, require.resolve('cmake-js/bin/cmake-js', { paths: [root] })];
}

/**
 * Builds the addon. `clean` starts from an empty build/; `stdio` is passed to the build tools.
 * Returns { tool, cuda } or throws with the failing command.
 */
function buildAddon({ clean = false, stdio = 'inherit' } = {}) {
  const env = buildEnv();
  const withCuda = nvcc(env) !== null;
  let steps;
  if (withCuda) {
    const cmakeJs = cmakeJsCommand();
    // configure re-reads src/cpu/find-openblas.cjs: OpenBLAS installed since the last build is picked up
    steps = clean
      ? [[...cmakeJs, 'rebuild', '--log-level', 'warn']]
      : [[...cmakeJs, 'configure', '--log-level', 'warn'], [...cmakeJs, 'build', '--log-level', 'warn']];
  } else {
    steps = [[...nodeGypCommand(env), clean ? 'rebuild' : 'build', '--jobs', 'max']];
    if (!clean) steps.unshift([...nodeGypCommand(env), 'configure']);
  }
  for (const [cmd, ...args] of steps) {
    const r = spawnSync(cmd, args, { cwd: root, env, stdio });
    if (r.error || r.status !== 0) {
      const why = r.error ? r.error.message : `exit status ${r.status}`;
      throw new Error(`${path.basename(args[0] || cmd)} ${args.slice(1).join(' ')} failed (${why})`);
    }
  }
  return { tool: withCuda ? 'cmake-js' : 'node-gyp', cuda: withCuda };
}

/** What a built addon file holds, read in a child process so a bad file cannot crash the caller. */
function describeAddon(file) {
  const probe = `
    const a = require(${JSON.stringify(file)});
    const g = a.cpuInfo().gemm;
    console.log(JSON.stringify({ build: a.build, blasLinked: g.blasLinked, gemm: g.library }));`;
  const r = spawnSync(process.execPath, ['-e', probe], { encoding: 'utf8' });
  if (r.status !== 0) {
    const lines = (r.stderr || '').trim().split('\n').filter((l) => /Error/.test(l));
    throw new Error(lines[0] || `loading ${file} failed (exit status ${r.status})`);
  }
  return JSON.parse(r.stdout.trim().split('\n').pop());
}

/** One line saying what the addon holds. */
function summary(info) {
  const cuda = info.build.cuda
    ? `CUDA ${info.build.cudaVersion} kernels (${info.build.cudaArchitectures})`
    : 'no CUDA part';
  return `cpu backend (${info.blasLinked ? 'OpenBLAS linked in' : info.gemm}), emulated kernels (cuda-emu), ${cuda}`;
}

/** The dynamic libraries a file needs (readelf), or null where readelf is missing. */
function neededLibraries(file) {
  const r = spawnSync('readelf', ['-d', file], { encoding: 'utf8' });
  if (r.error || r.status !== 0) return null;
  return [...r.stdout.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1]);
}

/** A prebuild must hold the whole addon and need no library a user may lack. */
function checkWholeAddon(file) {
  const info = describeAddon(file);
  const missing = [];
  if (!info.build.cuda) missing.push('the CUDA part (nvcc was not on PATH)');
  if (!info.blasLinked) missing.push('OpenBLAS (install libopenblas-pthread-dev)');
  const needed = neededLibraries(file) || [];
  const extra = needed.filter((lib) => /cuda|blas|lapack|gfortran|gomp/i.test(lib));
  if (extra.length > 0) missing.push(`static linking: it needs ${extra.join(', ')} at run time`);
  if (missing.length > 0) throw new Error(`the addon lacks ${missing.join('; ')}`);
  return info;
}

module.exports = { buildAddon, describeAddon, summary, checkWholeAddon, cxxCompiler, nvcc, onPath, root };

if (require.main === module) {
  const prebuild = process.argv[2] === 'rebuild';
  try {
    if (prebuild) {
      if (nvcc() === null) throw new Error('a prebuild holds the CUDA part: nvcc must be on PATH');
      buildAddon({ clean: true });
      const info = checkWholeAddon(path.join(root, 'build', 'Release', 'cutloss.node'));
      console.log(`cutloss prebuild: ${summary(info)}`);
    } else {
      buildAddon();
    }
  } catch (e) {
    console.error(`cutloss: ${e.message}`);
    process.exit(1);
  }
}
