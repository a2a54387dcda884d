#!/usr/bin/env bash
# moe-run's command line: exit codes, messages, and what it writes (or refuses to) — run by ctest
# as moe-run.cli with the binary and the fixtures folder. Any failed expectation fails the test.
set -uo pipefail
moe_run=$1
fixtures=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0

# expect CODE PATTERN -- ARGS...: moe-run ARGS exits with CODE and its stdout + stderr match PATTERN.
expect() {
  local code=$1 pattern=$2
  shift 3
  "$moe_run" "$@" >"$work/out" 2>"$work/err"
  local got=$?
  if [[ $got != "$code" ]] || ! grep -Eq -- "$pattern" "$work/out" "$work/err"; then
    echo "FAILED: moe-run $* -> exit $got (expected $code), output:" >&2
    cat "$work/out" "$work/err" >&2
    failures=$((failures + 1))
  fi
}
check() {  # check DESCRIPTION COMMAND...: the command succeeds
  if ! "${@:2}"; then
    echo "FAILED: $1" >&2
    failures=$((failures + 1))
  fi
}

layer=(--weights "$fixtures/mixtral.safetensors" --format mixtral --prefix model.layers.0.block_sparse_moe.
       --input "$fixtures/mixtral_x.npy")

expect 0 '^usage: moe-run' -- --help
check "--help prints to stdout only" test ! -s "$work/err"
expect 2 "--top-k: '0' but expected at least 1" -- "${layer[@]}" --output "$work/y.npy" --top-k 0
expect 2 "--tolerance: '-1' but expected a finite number >= 0" -- "${layer[@]}" --output "$work/y.npy" --tolerance -1
expect 2 '--output is the same file as --input' -- "${layer[@]}" --output "$fixtures/mixtral_x.npy"
expect 2 '--dx-output needs --backward' -- "${layer[@]}" --output "$work/y.npy" --dx-output "$work/dx.npy"
expect 2 '--grad-output is the same file as --weights' -- "${layer[@]}" --output "$work/y.npy" \
  --backward "$fixtures/mixtral_c.npy" --grad-output "$fixtures/mixtral.safetensors"
ln -s "$fixtures/mixtral.safetensors" "$work/weights_link"
expect 2 '--output is the same file as --weights' -- "${layer[@]}" --output "$work/weights_link"
check "the weights are untouched" test -L "$work/weights_link"
# ... nor any file of a sharded checkpoint (its index, its shards).
mkdir "$work/sharded"
cp "$fixtures/mixtral.safetensors" "$work/sharded/shard.safetensors"
names=$(head -c 65536 "$fixtures/mixtral.safetensors" | grep -ao '"model\.layers\.0\.[^"]*"' | sort -u)
{ echo '{"weight_map": {'; sed 's/$/: "shard.safetensors",/; $ s/,$//' <<<"$names"; echo '}}'; } \
  >"$work/sharded/model.safetensors.index.json"
sharded=(--weights "$work/sharded" --format mixtral --prefix model.layers.0.block_sparse_moe.
         --input "$fixtures/mixtral_x.npy")
expect 0 '' -- "${sharded[@]}" --output "$work/y_sharded.npy" --check "$fixtures/mixtral_y.npy"
expect 2 '--output is the same file as .*shard.safetensors, read for --weights' -- "${sharded[@]}" \
  --output "$work/sharded/shard.safetensors"
expect 2 '--dx-output is the same file as .*index.json, read for --weights' -- "${sharded[@]}" --output "$work/y2.npy" \
  --backward "$fixtures/mixtral_c.npy" --dx-output "$work/sharded/model.safetensors.index.json"
check "the shard is untouched" cmp -s "$fixtures/mixtral.safetensors" "$work/sharded/shard.safetensors"

# A failed --check says why and writes nothing.
expect 1 'check of y failed: .* exceeds the tolerance 1e-09; nothing written' -- "${layer[@]}" --output "$work/y.npy" \
  --dtype bf16 --check "$fixtures/mixtral_y.npy" --tolerance 1e-9
check "a failed --check leaves no output" test ! -e "$work/y.npy"

# Only regular files or new paths are written.
mkfifo "$work/fifo"
expect 1 'fifo: is a FIFO, not a regular file; refusing to replace it' -- "${layer[@]}" --output "$work/fifo"
check "the FIFO stays a FIFO" test -p "$work/fifo"
if mknod "$work/null" c 1 3 2>/dev/null; then
  expect 1 'null: is a character device' -- "${layer[@]}" --output "$work/null"
  check "the device stays a device" test -c "$work/null"
fi
echo old >"$work/target.npy"
ln -s target.npy "$work/link.npy"
expect 1 'link.npy: is a symbolic link; refusing to replace it' -- "${layer[@]}" --output "$work/link.npy"
check "the link's target is untouched" grep -q old "$work/target.npy"
expect 0 "wrote $work/link.npy" -- "${layer[@]}" --output "$work/link.npy" --follow-symlinks
check "--follow-symlinks writes the target" test -L "$work/link.npy" -a "$(head -c 6 "$work/target.npy" | tail -c 5)" = NUMPY
check "no temporary file is left" test -z "$(ls -A "$work" | grep "^\.")"

if ((failures > 0)); then
  echo "$failures expectation(s) failed" >&2
  exit 1
fi
echo "moe-run command line: all expectations held"
