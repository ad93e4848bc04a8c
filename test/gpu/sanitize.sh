#!/usr/bin/env bash
# compute-sanitizer's memcheck and racecheck over a small linearCrossEntropy run on the GPU
# (test/gpu/sanitize-run.mjs). Needs a built addon and dist (npm run build:native, npm run build).
# Says so and exits 0 where compute-sanitizer or a GPU is absent.
set -u
cd "$(dirname "$0")/../.."
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ -z "$SANITIZER" ]; then
  echo "sanitize.sh: compute-sanitizer is absent (it ships with the CUDA toolkit): skipped"
  exit 0
fi
if ! node -e "import('./dist/esm/index.js').then(m => process.exit(m.backends().find(b => b.name === 'cuda').available ? 0 : 1))"; then
  echo "sanitize.sh: the cuda backend is unavailable here: skipped"
  exit 0
fi
status=0
for tool in memcheck racecheck; do
  echo "== compute-sanitizer --tool $tool"
  # node's own allocations are host-side; the addon links cudart statically, so its API is seen
  "$SANITIZER" --tool "$tool" --error-exitcode 86 --target-processes all node test/gpu/sanitize-run.mjs || status=1
done
exit $status
