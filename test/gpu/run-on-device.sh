#!/usr/bin/env bash
# Everything the GPU checks need, on a fresh GPU machine with this repository: install, build,
# the GPU test suites, the GPU benchmark, compute-sanitizer. Each step runs even when an earlier
# one failed; logs go to $OUT (default ./gpu-run). Exit status: 0 when every step passed.
set -x
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-run}
mkdir -p "$OUT"
failed=""
step() {  # step NAME COMMAND...: runs it, logs to $OUT/NAME.log, remembers a failure
  local name=$1
  shift
  "$@" >"$OUT/$name.log" 2>&1 || failed="$failed $name"
  tail -n 40 "$OUT/$name.log"
}
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
step npm-ci npm ci --ignore-scripts
step build-native env npm_config_nodedir="${npm_config_nodedir:-}" npm run build:native
step build npm run build
step backends node -e "import('./dist/esm/index.js').then(m => console.log(JSON.stringify(m.backends(), null, 2)))"
step test-gpu npx vitest run test/gpu
step bench node dist/esm/cli.js bench --backend cuda --quick --out "$OUT/bench"  # `npx cutloss bench` once installed
step sanitize bash test/gpu/sanitize.sh
echo "failed steps:${failed:- none}" | tee "$OUT/summary.txt"
[ -z "$failed" ]
