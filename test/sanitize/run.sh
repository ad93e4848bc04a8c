#!/usr/bin/env bash
# The addon under sanitizers, without its CUDA part (CMakeLists.txt CUTLOSS_SANITIZE), each build
# in a directory of its own and loaded through CUTLOSS_ADDON:
#   asan  AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/): the cpu and cuda-emu suites
#         that go through the addon (see ASAN_FILES, EMU_FILES below)
#   tsan  ThreadSanitizer (build-tsan/): the cpu thread pool and the async job path under load
#         (test/sanitize/tsan-load.ts); the emulated kernels stay uninstrumented (fibers)
# Any sanitizer report fails the run (UBSan does not recover; the logs are searched too).
#   bash test/sanitize/run.sh [asan] [tsan]        (default: both)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
jobs=$(nproc)
if [ -z "${npm_config_nodedir:-}" ] && [ -f /usr/include/node/node_api.h ]; then export npm_config_nodedir=/usr; fi
mkdir -p bench/out
summary=()

build() { # dir sanitizers
  local t=$SECONDS
  local cmakejs=(node node_modules/cmake-js/bin/cmake-js -O "$1" --log-level warn)
  { "${cmakejs[@]}" configure --CDCUTLOSS_CUDA=OFF "--CDCUTLOSS_SANITIZE=$2" &&
    "${cmakejs[@]}" build -p "$jobs"; } >"bench/out/sanitize-$1.log" 2>&1 ||
    { tail -n 40 "bench/out/sanitize-$1.log"; echo "sanitize: building $1 failed"; exit 1; }
  echo "sanitize: built $1 ($2) in $((SECONDS - t))s"
}

# Fails when a log, or a report file a sanitizer wrote, holds a report (a child process's too).
reports='ERROR: (AddressSanitizer|LeakSanitizer)|WARNING: ThreadSanitizer|runtime error:|DEADLYSIGNAL'
check_log() { # log
  local files=("$1" bench/out/sanitize-report.*)
  if grep -q -s -E "$reports" "${files[@]}"; then
    grep -s -E -A 12 "$reports" "${files[@]}" | head -n 80
    echo "sanitize: reports in ${files[*]}"; return 1
  fi
}
rm -f bench/out/sanitize-report.*

# Suites through the addon on cpu and cuda-emu. Left out: the tests that cap the address space
# (ASan's shadow memory does not fit) or that expect no addon (CUTLOSS_ADDON gives one), the
# RSS bounds (ASan's quarantine holds freed memory), and the emulator suites' kernel-driver
# tests, which build their own uninstrumented driver rather than load the addon.
# test/native/cpu.test.ts is left out too: its memory-peak and bf16 bounds assume the optimized,
# multi-ISA build, and its 6 minutes repeat what edges, fuzz and load already run through the
# cpu kernels.
ASAN_FILES=(test/native/async.test.ts test/native/device.test.ts test/native/sharing.test.ts
  test/native/fuzz.test.ts test/edges.test.ts test/load.test.ts test/cpu-bf16.test.ts test/cpu-vocab-tiles.test.ts)
ASAN_SKIP='^(?!.*(address-space cap|without the addon|memory stays flat))'
EMU_FILES=(test/native/kernels-emu.test.ts test/native/linear-emu.test.ts)
EMU_ONLY='the addon running these kernels'

run_asan() {
  build build-asan address,undefined
  local t=$SECONDS log=bench/out/sanitize-asan-tests.log status=0
  (
    export CUTLOSS_ADDON=$root/build-asan/Release/cutloss.node
    export LD_PRELOAD=$(g++ -print-file-name=libasan.so)
    # Node keeps memory for its lifetime: no leak check. Huge requests fail as E_OOM, as without
    # ASan. UBSan stops at the first report.
    # Reports also go to files (bench/out/sanitize-report.<pid>): a test runner may swallow stderr.
    export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:log_path=$root/bench/out/sanitize-report
    export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=$root/bench/out/sanitize-report
    npx vitest run "${ASAN_FILES[@]}" -t "$ASAN_SKIP" &&
      npx vitest run "${EMU_FILES[@]}" -t "$EMU_ONLY"
  ) >"$log" 2>&1 || status=$?
  check_log "$log" || status=1
  grep -E 'Tests +[0-9]' "$log" | sed 's/\x1b\[[0-9;]*m//g' || true
  if [ "$status" -ne 0 ]; then tail -n 60 "$log"; fi
  summary+=("asan+ubsan: $([ "$status" -eq 0 ] && echo clean || echo FAILED) in $((SECONDS - t))s (log $log)")
  return "$status"
}

run_tsan() {
  build build-tsan thread
  local t=$SECONDS log=bench/out/sanitize-tsan.log status=0
  (
    export CUTLOSS_ADDON=$root/build-tsan/Release/cutloss.node
    export LD_PRELOAD=$(g++ -print-file-name=libtsan.so)
    # Node, V8 and libuv are not instrumented: races are looked for in the addon's accesses only
    # (their locks still order them).
    export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:ignore_noninstrumented_modules=1:log_path=$root/bench/out/sanitize-report
    node --import tsx test/sanitize/tsan-load.ts
  ) >"$log" 2>&1 || status=$?
  check_log "$log" || status=1
  tail -n 5 "$log"
  summary+=("tsan: $([ "$status" -eq 0 ] && echo clean || echo FAILED) in $((SECONDS - t))s (log $log)")
  return "$status"
}

what=("$@")
[ ${#what[@]} -eq 0 ] && what=(asan tsan)
failed=0
for w in "${what[@]}"; do
  case "$w" in
    asan) run_asan || failed=1 ;;
    tsan) run_tsan || failed=1 ;;
    *) echo "usage: $0 [asan] [tsan]"; exit 2 ;;
  esac
done
printf 'sanitize: %s\n' "${summary[@]}"
exit "$failed"
