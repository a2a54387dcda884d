#!/usr/bin/env bash
# Builds a libFuzzer target with clang++ (-fsanitize=fuzzer,address,undefined) and fuzzes it for
# SECONDS from a scratch copy of its seed corpus (the committed corpus is never modified).
#
#   tests/fuzz/run.sh [SECONDS=60] [TARGET=safetensors ...]      targets: safetensors, npy
#
# Exits non-zero if the fuzzer finds a crash, a sanitizer report, a leak or a timeout; the input
# that triggered it is kept in $MOE_FUZZ_ARTIFACTS (default build/fuzz/) to replay with
#   build/fuzz/<target>_fuzz <artifact>
# Needs clang++ and its fuzzer runtime (Debian: clang, libclang-rt-14-dev). Set CXX_FUZZ to pick a
# compiler and EIGEN_INCLUDE if Eigen is not in /usr/include/eigen3.
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors)
compiler=${CXX_FUZZ:-clang++}
eigen=${EIGEN_INCLUDE:-/usr/include/eigen3}
out=${MOE_FUZZ_ARTIFACTS:-build/fuzz}
mkdir -p "$out"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

for target in "${targets[@]}"; do
  source=tests/fuzz/${target}_fuzz.cpp
  [ -f "$source" ] || { echo "run.sh: no fuzz target $source" >&2; exit 2; }
  echo "== building $target fuzzer"
  "$compiler" -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -fno-omit-frame-pointer -Iinclude -isystem "$eigen" "$source" -o "$out/${target}_fuzz"
  mkdir -p "$scratch/$target"
  cp tests/fuzz/corpus/"$target"/* "$scratch/$target/"
  dict=()
  [ -f "tests/fuzz/$target.dict" ] && dict=(-dict="tests/fuzz/$target.dict")
  echo "== fuzzing $target for ${seconds}s"
  # -timeout: one input taking longer than 10 s is a finding; -rss_limit_mb bounds memory.
  "$out/${target}_fuzz" "$scratch/$target" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -max_len=4096 -print_final_stats=1 -artifact_prefix="$out/${target}-" \
    "${dict[@]}"
done
