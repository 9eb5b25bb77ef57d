#!/usr/bin/env bash
# The modelcast demo, run by `scripts/dev.sh demo` after the build.
#
# Today it runs the model-package path end to end: synthesize a Llama model in the Hugging
# Face format, prepare it into a loading-optimised package, verify every slice, inspect it,
# and show that a flipped byte is caught and named. (The cluster scale-out demo replaces
# this once the coordinator and agents exist.)
set -euo pipefail
BUILD="${1:?usage: demo.sh BUILD_DIR}"
MC="$BUILD/bin/modelcast"
WORK="$BUILD/demo"
rm -rf "$WORK"
mkdir -p "$WORK"

step() { printf '\n\033[1m== %s\033[0m\n$ %s\n' "$1" "${*:2}"; "${@:2}"; }

step "1. synthesize a ~100 MB Llama model (HF format: config.json + safetensors)" \
  "$MC" synth --preset small --seed 1 --out "$WORK/small-hf"
step "2. what the checkpoint holds" "$MC" inspect "$WORK/small-hf"
step "3. prepare it: 4 blocks of layers, 4 MiB checksummed slices, 4 KiB-aligned block files" \
  "$MC" prepare "$WORK/small-hf" "$WORK/small-pkg" --name llama-small --blocks 4 --slice-mib 4
step "4. the package" "$MC" inspect "$WORK/small-pkg"
ls -l "$WORK/small-pkg"
step "5. verify every slice checksum" "$MC" verify "$WORK/small-pkg"

cp -r "$WORK/small-pkg" "$WORK/damaged-pkg"
# Flip one byte in the middle of block 2's file.
size=$(stat -c %s "$WORK/damaged-pkg/block-0002.bin")
printf '\xff' | dd of="$WORK/damaged-pkg/block-0002.bin" bs=1 seek=$((size / 2 + 12345)) conv=notrunc status=none
printf '\n\033[1m== 6. a copy with one flipped byte: verify names the slice and fails\033[0m\n$ %s\n' "$MC verify $WORK/damaged-pkg"
if "$MC" verify "$WORK/damaged-pkg"; then
  echo "demo: verify did not catch the flipped byte" >&2
  exit 1
fi
printf '\n\033[1mdemo done.\033[0m Files are in %s\n' "$WORK"
