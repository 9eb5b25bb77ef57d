#!/usr/bin/env bash
# gpu-check.sh: every GPU test and figure of modelcast in one short run, for a session lent a GPU
# machine (which has CUDA, cuBLAS and Python but none of Debian's UCX, Thrift, glog or fio).
#
#   scripts/gpu-check.sh bundle [DIR]      here: builds, then packs the GPU test and bench
#                                          binaries and the libraries the GPU machine lacks into
#                                          DIR/bundle.tar.xz (DIR default gpu-bundle/, ignored by
#                                          git); shows its size (it must stay under 64 MiB) and
#                                          that every binary starts with the bundle's libraries.
#   scripts/gpu-check.sh run [DIR] [OUT]   there: runs every check, each under its own time limit
#                                          (all together under 8 minutes), and writes one JSON
#                                          report, OUT/gpu-report.json (OUT: $OUT, else .), with
#                                          each step's log beside it.
#
# The device call, after `scripts/gpu-check.sh bundle` here:
#   run(command='scripts/gpu-check.sh run gpu-bundle "$OUT"', carry=["gpu-bundle"], timeout_s=560)
#
# What it runs:
#   stage_gpu_test   every family and rope scaling on the CUDA stage against the float64
#                    reference (fp32: to 1e-5; bf16: the worst error in the report), split,
#                    batched, past 8,192 positions, weights read in place in the store's arena
#   store_gpu_test   the store's GPU tier: SSD -> host -> GPU, demotion, eviction
#   executor_bench   decode tokens/s at batch 1 and 16 against the HBM bound (bf16, then fp32)
#   tier_bench       host -> GPU against cudaMemcpy from pinned memory, SSD -> GPU against the
#                    slower of fio and cudaMemcpy
#   verbs_test       (label rdma) where the machine has an RDMA device (GPU memory registration
#                    included), and ib_write_bw over loopback where perftest is installed (no
#                    verbs p2p figure of modelcast's own beside it yet)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BINS=(stage_gpu_test store_gpu_test verbs_test executor_bench tier_bench)
# The libraries every machine has (the C library's own, the C++ runtime: the GPU machine's are
# newer) and CUDA's (the GPU machine's own driver and toolkit).
SYSTEM_LIBS='^(linux-vdso|libc\.so|libm\.so|libpthread|libdl\.so|librt\.so|ld-linux|libstdc\+\+|libgcc_s|libcuda\.so|libnvidia)'

die() { echo "gpu-check: $*" >&2; exit 1; }

# The non-system libraries `$1` loads, one path per line.
libs_of() {
  ldd "$1" 2>/dev/null | awk '/=> \// {print $1, $3}' | while read -r name path; do
    [[ "$name" =~ $SYSTEM_LIBS ]] || echo "$path"
  done
}

bundle() {
  local target=${1:-gpu-bundle}
  [[ "$target" = /* ]] || target=$ROOT/$target
  scripts/dev.sh build >/dev/null || die "the build failed (scripts/dev.sh build)"
  local dir=$target.staging
  rm -rf "$dir" && mkdir -p "$dir/bin" "$dir/lib/ucx" || die "cannot make $dir"
  for b in "${BINS[@]}"; do
    [ -x "build/bin/$b" ] || die "build/bin/$b is missing: was the build made with CUDA?"
    strip --strip-debug -o "$dir/bin/$b" "build/bin/$b"
  done
  for tool in fio ib_write_bw; do
    if command -v "$tool" >/dev/null; then cp "$(command -v "$tool")" "$dir/bin/"; fi
  done
  # UCX's transports are modules it loads at run time (UCX_MODULE_DIR points there).
  local ucxdir
  ucxdir=$(dirname "$(ldd build/bin/verbs_test | awk '/libucp/ {print $3}')")/ucx
  [ -d "$ucxdir" ] && cp -L "$ucxdir"/libuct_*.so.0 "$ucxdir"/libucm_*.so.0 "$dir/lib/ucx/" 2>/dev/null
  local all
  all=$( { for f in "$dir"/bin/* "$dir"/lib/ucx/*; do libs_of "$f"; done; } | sort -u)
  for l in $all; do cp -L "$l" "$dir/lib/"; done
  # Second level: what those libraries load.
  all=$( { for f in "$dir"/lib/*.so*; do libs_of "$f"; done; } | sort -u)
  for l in $all; do [ -e "$dir/lib/$(basename "$l")" ] || cp -L "$l" "$dir/lib/"; done
  local bytes
  bytes=$(du -sb "$dir" | cut -f1)
  echo "gpu-check: $(find "$dir" -type f | wc -l) files, $((bytes / 1048576)) MiB unpacked (fio brings its storage libraries)"
  du -sh "$dir"/bin/* | sort -h | tail -n 8
  # It starts: every binary loads with the bundle's libraries, nothing missing.
  local missing=0
  for f in "$dir"/bin/*; do
    if LD_LIBRARY_PATH=$dir/lib ldd "$f" | grep -q 'not found'; then
      echo "gpu-check: $(basename "$f") lacks: $(LD_LIBRARY_PATH=$dir/lib ldd "$f" | grep 'not found' | tr -s ' \t' ' ')"
      missing=1
    fi
  done
  [ $missing = 0 ] || die "libraries are missing from the bundle"
  for t in stage_gpu_test store_gpu_test verbs_test; do
    n=$(env -i PATH=/usr/bin:/bin LD_LIBRARY_PATH="$dir/lib" "$dir/bin/$t" --gtest_list_tests | grep -c '^  ')
    echo "gpu-check: $t starts with the bundle's libraries: $n tests"
  done
  LD_LIBRARY_PATH=$dir/lib "$dir/bin/executor_bench" --help >/dev/null || die "executor_bench does not start"
  # What travels: one compressed archive.
  rm -rf "$target" && mkdir -p "$target"
  tar -C "$dir" -cf - . | xz -T0 -6 >"$target/bundle.tar.xz" || die "cannot pack $target/bundle.tar.xz"
  rm -rf "$dir"
  bytes=$(stat -c %s "$target/bundle.tar.xz")
  echo "gpu-check: bundle $target/bundle.tar.xz: $((bytes / 1048576)) MiB"
  [ "$bytes" -lt $((64 << 20)) ] || die "the bundle is $((bytes >> 20)) MiB, over the 64 MiB a device call carries"
  echo "gpu-check: ready. On a GPU machine: scripts/gpu-check.sh run ${1:-gpu-bundle} \"\$OUT\""
}

# Directories holding libcublas / libcudart on this machine (the toolkit's, or the Python wheels').
cuda_lib_dirs() {
  local d
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-*/lib64; do
    [ -d "$d" ] && echo "$d"
  done
  find /usr/local /opt /usr/lib -name 'libcublas.so.1[0-9]*' 2>/dev/null | head -n 3 | xargs -r -n1 dirname
}

run_checks() {
  local packed=${1:-gpu-bundle} out=${2:-${OUT:-.}}
  [[ "$packed" = /* ]] || packed=$ROOT/$packed
  [ -f "$packed/bundle.tar.xz" ] || die "$packed holds no bundle: make one with scripts/gpu-check.sh bundle"
  local dir=/tmp/gpu-check-bundle
  rm -rf "$dir" && mkdir -p "$dir" || die "cannot make $dir"
  tar -C "$dir" -xJf "$packed/bundle.tar.xz" 2>/dev/null ||
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$packed/bundle.tar.xz" "$dir" ||
    die "cannot unpack $packed/bundle.tar.xz"
  mkdir -p "$out" || die "cannot write to $out"
  out=$(cd "$out" && pwd)
  local libs
  libs=$(cuda_lib_dirs | sort -u | paste -sd:)
  export LD_LIBRARY_PATH="$dir/lib${libs:+:$libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export UCX_MODULE_DIR="$dir/lib/ucx" PATH="$dir/bin:$PATH"
  local work=/tmp/gpu-check-work
  mkdir -p "$work"
  local steps="$out/steps.tsv"
  : >"$steps"
  step() {  # step NAME LIMIT_S COMMAND...: runs it, logs to OUT/NAME.log, records rc and seconds
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo "== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$steps"
    tail -n 4 "$out/$name.log"
    echo "== $name: rc $rc in $((SECONDS - t0)) s"
  }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$out/device.txt" 2>&1 || true
  step stage_gpu_test 170 stage_gpu_test --gtest_output="json:$out/stage_gpu_test.json"
  step store_gpu_test 60 store_gpu_test --gtest_output="json:$out/store_gpu_test.json"
  step executor_bf16 80 executor_bench --device cuda --preset medium --work "$work" --reps 3 --steps 32
  step executor_fp32 60 executor_bench --device cuda --preset medium --work "$work" --reps 3 --steps 32 --widen
  step tier_bench 100 tier_bench --work "$work" --reps 3
  if [ -n "$(ls /sys/class/infiniband 2>/dev/null)" ]; then
    step verbs_test 60 verbs_test --gtest_output="json:$out/verbs_test.json"
    if command -v ib_write_bw >/dev/null; then
      step ib_write_bw 30 sh -c 'ib_write_bw -s 1048576 -D 5 --report_gbits >/dev/null 2>&1 & sleep 1; ib_write_bw -s 1048576 -D 5 --report_gbits localhost'
    fi
  else
    printf 'verbs_test\tskipped: no RDMA device (/sys/class/infiniband is empty)\t0\n' >>"$steps"
  fi
  python3 - "$out" <<'EOF'
import json, os, sys
out = sys.argv[1]
report = {"device": open(os.path.join(out, "device.txt")).read().strip(), "steps": {}}
for line in open(os.path.join(out, "steps.tsv")):
    name, rc, secs = line.rstrip("\n").split("\t")
    step = {"rc": rc if not rc.lstrip("-").isdigit() else int(rc), "seconds": int(secs)}
    g = os.path.join(out, name + ".json")
    if os.path.exists(g):
        j = json.load(open(g))
        step["tests"], step["failures"] = j.get("tests"), j.get("failures")
        cases = [c for s in j.get("testsuites", []) for c in s.get("testsuite", [])]
        step["skipped"] = sum(1 for c in cases if c.get("result") == "SKIPPED")
        step["failed"] = [c["classname"] + "." + c["name"] for c in cases if c.get("failures")]
        step["properties"] = {c["classname"] + "." + c["name"]: {k: v for k, v in c.items() if k in (
            "worst_relative_error", "weight_bytes", "in_place_device_bytes", "uploaded_device_bytes")}
            for c in cases if any(k in c for k in ("worst_relative_error", "weight_bytes"))}
    log = os.path.join(out, name + ".log")
    if os.path.exists(log):
        lines = open(log, errors="replace").read().splitlines()
        figures = [l for l in lines if l.startswith("{")]
        if figures:
            try:
                step["figures"] = json.loads(figures[-1])
            except ValueError:
                pass
        step["tail"] = lines[-3:]
    report["steps"][name] = step
json.dump(report, open(os.path.join(out, "gpu-report.json"), "w"), indent=1)
print(json.dumps(report, indent=1)[:6000])
EOF
}

case "${1:-}" in
  bundle) bundle "${2:-}" ;;
  run) run_checks "${2:-}" "${3:-}" ;;
  *) sed -n '2,16p' "$0"; exit 2 ;;
esac
