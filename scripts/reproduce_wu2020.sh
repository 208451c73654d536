#!/usr/bin/env bash
# Every run behind docs/REPRODUCTION.md's Wu et al. section, then its tables.
#   scripts/reproduce_wu2020.sh [results-folder] [extra hydra overrides]
# Per victim/target pair: train (clean pretraining cached and shared by every pair, then attack
# rounds) and run the whole defense with an honest attacker; then run the defense again from the
# same trained checkpoint with a lying attacker in the pruning rounds (no retraining).
# Tables land in <results-folder>/table_{honest,<lie>,step5,majority}.md.
set -euo pipefail
out=${1:-results/wu2020}; shift || true
extra=("data.root=${DATA_ROOT:-../shared/data}" "$@")
py=${PYTHON:-python}
pairs=${PAIRS:-"9:0 9:1 9:3 9:5 0:9 3:9"}
lie=${LIE:-keep_backdoor}
source "$(dirname "$0")/runs.sh"
mkdir -p "$out"
for pair in $pairs; do
  v=${pair%:*}; t=${pair#*:}
  run "honest_${v}_${t}" experiment=wu2020_table4 attack.source_label="$v" attack.target_label="$t"
done
for pair in $pairs; do
  v=${pair%:*}; t=${pair#*:}
  [ -f "$out/honest_${v}_${t}/checkpoint.pt" ] || continue
  run "${lie}_${v}_${t}" experiment=wu2020_table4 attack.source_label="$v" attack.target_label="$t" \
    checkpoint="$out/honest_${v}_${t}/checkpoint.pt" pretrain_rounds=0 num_rounds=0 pruning.lie="$lie"
done
# The same trained models, defended with a test point every 5 channels instead of every one,
# and (Table II) with majority votes instead of rankings, pruning and adjustment only.
for pair in $pairs; do
  v=${pair%:*}; t=${pair#*:}
  [ -f "$out/honest_${v}_${t}/checkpoint.pt" ] || continue
  from=("attack.source_label=$v" "attack.target_label=$t" "checkpoint=$out/honest_${v}_${t}/checkpoint.pt"
        pretrain_rounds=0 num_rounds=0)
  run "step5_${v}_${t}" experiment=wu2020_table4 "${from[@]}" pruning.step=5
  run "majority_${v}_${t}" experiment=wu2020_table2 pruning=majority "${from[@]}"
done
for variant in honest "$lie" step5 majority; do
  "$py" -m flbackdoor.pruning_table "$out"/"${variant}"_* -o "$out/table_${variant}.md"
done
