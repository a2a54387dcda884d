#!/usr/bin/env bash
# moe-run under mpirun: for each parity fixture, y (and with --backward d_x) written by -np 2 and
# -np 3 must be the same bytes as by -np 1, and pass the fixture's check against PyTorch.
# usage: mpi_test.sh MOE_RUN FIXTURES MPIEXEC
set -euo pipefail
run=$1 fixtures=$2 mpiexec=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mpirun() { "$mpiexec" --allow-run-as-root --oversubscribe -np "$@"; }

check() {  # name format prefix [routing flags...]
  local name=$1 format=$2 prefix=$3
  shift 3
  for np in 1 2 3; do
    mpirun "$np" "$run" --weights "$fixtures/$name.safetensors" --format "$format" --prefix "$prefix" "$@" \
      --input "$fixtures/${name}_x.npy" --output "$work/y$np.npy" --check "$fixtures/${name}_y.npy" >/dev/null
    mpirun "$np" "$run" --weights "$fixtures/$name.safetensors" --format "$format" --prefix "$prefix" "$@" \
      --input "$fixtures/${name}_x.npy" --output "$work/train_y$np.npy" --backward "$fixtures/mixtral_c.npy" \
      --dx-output "$work/dx$np.npy" --grad-output "$work/grads$np.safetensors" \
      --check-dx "$fixtures/${name}_dx.npy" --check-grads "$fixtures/${name}_grads.safetensors" --tolerance 1e-4 >/dev/null
  done
  for np in 2 3; do
    for out in y train_y dx; do
      cmp "$work/${out}1.npy" "$work/$out$np.npy" || { echo "$name: $out differs on $np ranks"; exit 1; }
    done
  done
  echo "$name: y and d_x the same bytes on 1, 2 and 3 ranks"
}

check mixtral mixtral model.layers.0.block_sparse_moe.
check qwen2_moe qwen2-moe model.layers.0.mlp.
check deepseek_v3 deepseek-v3 model.layers.0.mlp. --top-k 3 --n-group 4 --topk-group 2 --routed-scale 2.5
