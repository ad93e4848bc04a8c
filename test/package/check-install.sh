#!/usr/bin/env bash
# Installs cutloss the way users get it, from the committed tree: a clean clone, `npm pack`
# with nothing built before it (prepack builds dist/), a prebuild made by `npm run prebuildify`,
# then each tarball installed in an empty project and used from ESM, CommonJS and TypeScript:
#   source tarball, nvcc and compilers on PATH  -> built from source with the CUDA part
#   source tarball, no nvcc on PATH             -> built from source by node-gyp, no CUDA part
#   source tarball, no compilers on PATH        -> installs; js backend only, and says why
#   prebuilt tarball, no compilers on PATH      -> the prebuild is copied, nothing compiled
# Prints install times and tarball sizes. Usage: test/package/check-install.sh [--quick] [--worktree]
# (--quick: the prebuilt tarball only; --worktree: the working tree's files, committed or not,
# instead of the last commit).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
quick=""; worktree=""
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    --worktree) worktree=1 ;;
    *) echo "unknown argument $arg"; exit 2 ;;
  esac
done
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [ -n "$worktree" ]; then
  echo "== the working tree's files (tracked and untracked, not ignored), packed with nothing built"
  mkdir "$work/clone"
  (cd "$repo" && git ls-files -z -co --exclude-standard | xargs -0 cp -p --parents -t "$work/clone")
else
  echo "== clean clone of $(git -C "$repo" rev-parse --short HEAD), packed with nothing built"
  git clone -q "$repo" "$work/clone"
fi
cd "$work/clone"
npm ci --ignore-scripts --no-audit --no-fund --prefer-offline >/dev/null
[ ! -e dist ] && [ ! -e build ] || { echo "the clean clone already has dist/ or build/"; exit 1; }
npm pack --silent --pack-destination "$work" >/dev/null
mv "$work"/cutloss-*.tgz "$work/source.tgz"

# What the tarball must hold, and what it must not.
listing="$(tar tzf "$work/source.tgz")"
for f in dist/esm/index.js dist/esm/index.d.ts dist/cjs/index.js dist/cjs/index.d.ts dist/cjs/package.json \
         dist/esm/cli.js dist/esm/native-loader.cjs src/packaging/install.cjs binding.gyp CMakeLists.txt \
         cuda/linear_cross_entropy.cu src/cpu/find-openblas.cjs README.md; do
  grep -qx "package/$f" <<<"$listing" || { echo "the tarball lacks $f"; exit 1; }
done
if grep -E '^package/(test|bench|build|node_modules|prebuilds|\.ci)/|^package/lib/.*\.ts$' <<<"$listing"; then
  echo "the tarball holds files a consumer does not need (above)"; exit 1
fi
echo "source tarball: $(du -k "$work/source.tgz" | cut -f1) KiB, $(wc -l <<<"$listing") files"

if command -v nvcc >/dev/null 2>&1; then
  echo "== prebuild (npm run prebuildify)"
  SECONDS=0
  npm run prebuildify --silent >"$work/prebuildify.log" 2>&1 || { cat "$work/prebuildify.log"; exit 1; }
  tail -n 1 "$work/prebuildify.log"
  echo "prebuildify took ${SECONDS}s"
  ls -l prebuilds/*/
  npm pack --silent --pack-destination "$work" >/dev/null
  mv "$work"/cutloss-*.tgz "$work/prebuilt.tgz"
  # (grep -q on a pipe would end tar early: pipefail)
  grep -qE '^package/prebuilds/linux-x64/.*\.node$' <<<"$(tar tzf "$work/prebuilt.tgz")" || { echo "no prebuild in the tarball"; exit 1; }
  echo "prebuilt tarball: $(du -k "$work/prebuilt.tgz" | cut -f1) KiB"
fi

# PATHs without nvcc, and without any compiler or build tool: a directory of links to every
# other command on PATH.
strip_path() { # $1: regex of command names to leave out
  local dir="$work/bin-$2" d f name
  mkdir -p "$dir"
  IFS=: read -r -a dirs <<<"$PATH"
  for d in "${dirs[@]}"; do
    [ -d "$d" ] || continue
    for f in "$d"/*; do
      name="${f##*/}"
      [ -x "$f" ] && [ ! -e "$dir/$name" ] && ! grep -qE "$1" <<<"$name" && ln -s "$f" "$dir/$name"
    done
  done
  echo "$dir"
}
no_nvcc_path="$(strip_path '^nvcc$' no-nvcc)"
no_compiler_path="$(strip_path '^(nvcc|cc|c\+\+|cpp|gcc|g\+\+|clang|clang\+\+|make|gmake|cmake|ninja|ld|as)(-[0-9.]+)?$|^(x86_64|aarch64)-linux-gnu-|^(gcc|g\+\+|cpp|clang|c\+\+)-[0-9]+$' no-compiler)"

tsc7="$work/clone/node_modules/typescript/bin/tsc"
tsc5="$work/clone/node_modules/typescript5/bin/tsc"
tsx="$work/clone/node_modules/.bin/tsx"

consumer() { # $1 name, $2 tarball, $3 PATH, $4 expected addon (see consumer-checks.cjs)
  local dir="$work/consumer-$1"
  mkdir "$dir"
  cp "$repo"/test/package/consumer.* "$repo"/test/package/consumer-checks.cjs "$dir/"
  (
    cd "$dir"
    export PATH="$3" CUTLOSS_EXPECT="$4"
    echo '{ "name": "consumer", "version": "1.0.0", "private": true }' > package.json
    SECONDS=0
    npm install --no-audit --no-fund --prefer-offline --foreground-scripts "$2" 2>&1 | grep -E '^cutloss' || true
    echo "install ($1) took ${SECONDS}s"
    [ -d node_modules/cutloss ] || { echo "the install failed"; exit 1; }
    node consumer.mjs
    node consumer.cjs
    "$tsc7" --strict --noEmit consumer.ts
    [ ! -f "$tsc5" ] || "$tsc5" --strict --noEmit consumer.ts
    "$tsx" consumer.ts
    echo "cutloss --version: $(npx --no-install cutloss --version)"
    # the installed "bin": the emulated kernels against the js reference
    [ "$4" != prebuilt ] || npx --no-install cutloss doctor --quick | tail -n 3
  )
}

if [ -f "$work/prebuilt.tgz" ]; then
  echo "== prebuilt tarball, no compiler on PATH"
  consumer prebuilt "$work/prebuilt.tgz" "$no_compiler_path" prebuilt
fi
[ -n "$quick" ] && exit 0
if command -v nvcc >/dev/null 2>&1; then
  echo "== source tarball, nvcc and compilers on PATH"
  consumer source-cuda "$work/source.tgz" "$PATH" cuda
fi
echo "== source tarball, no nvcc on PATH"
consumer source-no-nvcc "$work/source.tgz" "$no_nvcc_path" no-cuda
echo "== source tarball, no compiler on PATH"
consumer source-no-compiler "$work/source.tgz" "$no_compiler_path" js
echo "package checks passed"
