'use strict';
// The package's install step: use the prebuilt addon when one matches this machine and loads,
// else build from source (src/packaging/addon-build.cjs), and say in one line which and why. The js
// backend needs no addon, so an install where nothing can be built still succeeds: the line,
// build/install-report.txt and backends() say why the native backends are missing.
//
// CUTLOSS_BUILD_FROM_SOURCE=1 (or `npm install --build-from-source`) skips the prebuild.
const fs = require('node:fs');
const path = require('node:path');
const { buildAddon, describeAddon, summary, cxxCompiler, nvcc, root } = require('./addon-build.cjs');

const reportFile = path.join(root, 'build', 'install-report.txt');

/**
 * npm hides install scripts' output unless one fails; the line also goes to the terminal when
 * there is one, and to build/install-report.txt for `cutloss doctor` and backends().
 */
function say(line) {
  console.log(line);
  fs.mkdirSync(path.dirname(reportFile), { recursive: true });
  fs.writeFileSync(reportFile, `${line}\n`);
  if (process.stdout.isTTY) return;
  try {
    const fd = fs.openSync('/dev/tty', 'w');
    fs.writeSync(fd, `${line}\n`);
    fs.closeSync(fd);
  } catch {
    // no controlling terminal (CI, a service): the report file keeps the line
  }
}

/** The prebuilt file node-gyp-build would load here, or null with the reason. */
function matchingPrebuild() {
  const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  if (!fs.existsSync(dir)) return { file: null, why: `no prebuilt addon for ${process.platform}-${process.arch}` };
  try {
    const file = require('node-gyp-build').path(root);
    if (file.startsWith(dir)) return { file, why: null };
    return { file: null, why: `an addon in ${path.relative(root, path.dirname(file))} takes precedence` };
  } catch (e) {
    return { file: null, why: `no prebuilt addon matches this machine (${e.message.split('\n')[0]})` };
  }
}

function fromSourceRequested() {
  return process.env.CUTLOSS_BUILD_FROM_SOURCE === '1' || process.env.npm_config_build_from_source === 'true';
}

function main() {
  const built = path.join(root, 'build', 'Release', 'cutloss.node');
  let reason;
  if (fromSourceRequested()) {
    reason = 'CUTLOSS_BUILD_FROM_SOURCE or --build-from-source asked for it';
  } else if (fs.existsSync(built)) {
    try {
      say(`cutloss: using the addon already built in build/Release: ${summary(describeAddon(built))}`);
      return;
    } catch (e) {
      reason = `build/Release/cutloss.node does not load (${e.message})`;
    }
  } else {
    const prebuild = matchingPrebuild();
    if (prebuild.file !== null) {
      try {
        const info = describeAddon(prebuild.file);
        say(`cutloss: prebuilt addon ${path.relative(root, prebuild.file)}, nothing compiled: ${summary(info)}`);
        return;
      } catch (e) {
        reason = `the prebuilt addon does not load here (${e.message})`;
      }
    } else {
      reason = prebuild.why;
    }
  }

  if (cxxCompiler() === null) {
    say(`cutloss: ${reason}, and no C++ compiler is on PATH to build one: only the js backend is available ` +
      '(install g++ and run `npm rebuild cutloss` for the native backends)');
    return;
  }
  const how = nvcc() !== null
    ? 'with cmake-js and nvcc (CUDA part included)'
    : 'with node-gyp, without the CUDA part (nvcc is not on PATH)';
  console.log(`cutloss: ${reason}: building from source ${how}`);
  const started = Date.now();
  try {
    buildAddon({ clean: true });
    const seconds = ((Date.now() - started) / 1000).toFixed(0);
    say(`cutloss: ${reason}: built from source ${how} in ${seconds} s: ${summary(describeAddon(built))}`);
  } catch (e) {
    say(`cutloss: ${reason}, and building from source ${how} failed: ${e.message}; only the js backend ` +
      'is available (the build log is above; `npm rebuild cutloss --foreground-scripts` shows it again)');
  }
}

main();
