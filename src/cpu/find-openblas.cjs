'use strict';
// Finds a static OpenBLAS (libopenblas.a, pthreads build) and its cblas.h for the CPU
// backend, for both builds: binding.gyp runs `node src/cpu/find-openblas.cjs <field>` and
// CMakeLists.txt runs it too, so they agree. Prints one field:
//   defines    CUTLOSS_WITH_OPENBLAS=1 or CUTLOSS_WITH_OPENBLAS=0
//   include    the directory of cblas.h (nothing when not found)
//   libraries  the archive and what it needs (-lpthread -lm), or nothing
//   summary    one line for build logs
// Linked statically, the addon needs no BLAS on the user's machine. CUTLOSS_OPENBLAS=off
// builds without it; CUTLOSS_OPENBLAS_LIB and CUTLOSS_OPENBLAS_INCLUDE point at another copy.
const fs = require('node:fs');
const path = require('node:path');

const LIB_DIRS = [
  // Debian/Ubuntu: libopenblas-pthread-dev (the OpenMP build would need libgomp at run time)
  '/usr/lib/x86_64-linux-gnu/openblas-pthread',
  '/usr/lib/aarch64-linux-gnu/openblas-pthread',
  '/usr/lib64/openblas-pthreads', // Fedora (openblas-static)
  '/usr/lib64',
  '/usr/local/lib',
  '/opt/OpenBLAS/lib',
  '/usr/lib',
];
const INCLUDE_DIRS = [
  '/usr/include/x86_64-linux-gnu/openblas-pthread',
  '/usr/include/aarch64-linux-gnu/openblas-pthread',
  '/usr/include/openblas',
  '/usr/local/include',
  '/opt/OpenBLAS/include',
  '/usr/include',
];

function find() {
  if (process.env.CUTLOSS_OPENBLAS === 'off') return { found: false, why: 'CUTLOSS_OPENBLAS=off' };
  const lib = process.env.CUTLOSS_OPENBLAS_LIB ?? LIB_DIRS.map((d) => path.join(d, 'libopenblas.a')).find((f) => fs.existsSync(f));
  const include = process.env.CUTLOSS_OPENBLAS_INCLUDE ?? INCLUDE_DIRS.find((d) => fs.existsSync(path.join(d, 'cblas.h')));
  if (lib === undefined || !fs.existsSync(lib)) return { found: false, why: 'no libopenblas.a (install libopenblas-pthread-dev)' };
  if (include === undefined) return { found: false, why: `no cblas.h next to ${lib}` };
  return { found: true, lib, include };
}

const r = find();
const field = process.argv[2];
if (field === 'defines') console.log(`CUTLOSS_WITH_OPENBLAS=${r.found ? 1 : 0}`);
else if (field === 'include') console.log(r.found ? r.include : '');
else if (field === 'libraries') console.log(r.found ? `${r.lib} -lpthread -lm` : '');
else if (field === 'summary') console.log(r.found ? `OpenBLAS ${r.lib} (static)` : `no OpenBLAS: ${r.why}; the portable GEMM`);
else {
  console.error('usage: find-openblas.cjs defines|include|libraries|summary');
  process.exit(2);
}
