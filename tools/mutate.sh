#!/usr/bin/env bash
# Plants plausible bugs in include/moe one at a time, runs the test suite for each and reports the
# mutants no test caught, so the suite's strength can be measured again (not part of CI: a full
# rebuild per mutant takes minutes).
#   tools/mutate.sh [BUILD_DIR]        (default build/test, configured by the test preset)
# Each mutant is "file|perl substitution|what it plants"; the substitution must change the file.
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/test}
mutants=(
  "include/moe/kernels/combine.hpp|s/for \(Index j = 0; j < k; \+\+j\) \{/for (Index j = k - 1; j >= 0; --j) {/|combine sums the slots in descending order"
  "include/moe/gating/top_k_gate.hpp|s/d_selected_\[j\] = scale \* grads.d_weight\(t, j\);/d_selected_[j] = grads.d_weight(t, j);/|unnormalised backward drops the routed scale"
  "include/moe/train/adam.hpp|s/        if \(decoupled\) theta\[j\] \*= decay_factor;\n//; s/(        theta\[j\] -= step_size \* m\[j\] \/ denom;)/\$1\n        if (decoupled) theta[j] *= decay_factor;/|AdamW decays after the update"
  "include/moe/gating/router.hpp|s/grads.weight_.noalias\(\) \+= d_logits/grads.weight_.noalias() = d_logits/|router weight gradient overwritten instead of accumulated"
  "include/moe/detail/float16.hpp|s/bits \+ 0x7fffu \+ \(\(bits >> 16\) & 1u\)/bits + 0x7fffu/|bf16 rounding loses the tie-to-even bit"
  "include/moe/io/safetensors.hpp|s/if \(\*end > data_.size\(\)\)/if (*end > data_.size() + 1)/|a tensor may end one byte past the data"
  "include/moe/io/safetensors.hpp|s/if \(t->begin < covered\)/if (t->begin + 1 < covered)/|two tensors may overlap by one byte"
  "include/moe/dispatch/runner.hpp|s/if \(batch.rows_of\(i\) > 0\) experts.prepack\(i\);/if (batch.rows_of(i) > 1) experts.prepack(i);/|experts with one row are not prepacked"
)
survivors=0
for mutant in "${mutants[@]}"; do
  IFS='|' read -r file expression what <<<"$mutant"
  cp "$file" "$file.orig"
  perl -0pi -e "$expression" "$file"
  if cmp -s "$file" "$file.orig"; then
    echo "NOT APPLIED (the code changed?): $what"
  elif ! cmake --build "$build" -j 2 >/dev/null 2>&1; then
    echo "caught by the compiler: $what"
  elif ctest --test-dir "$build" -j 2 -E '^demo$' --timeout 600 >/dev/null 2>&1; then
    echo "SURVIVED: $what"
    survivors=$((survivors + 1))
  else
    echo "caught: $what"
  fi
  mv "$file.orig" "$file"
  touch "$file"  # newer than the mutant's objects, so that the next build recompiles what used it
done
cmake --build "$build" -j 2 >/dev/null 2>&1
echo "$survivors of ${#mutants[@]} mutants survived"
