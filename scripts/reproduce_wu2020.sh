#!/usr/bin/env bash
# Every run behind docs/REPRODUCTION.md's Wu et al. section, then its tables.
#   scripts/reproduce_wu2020.sh [results-folder] [extra hydra overrides]
# Per victim/target pair: train (clean pretraining cached and shared by every pair, then attack
# rounds) and run the whole defense with an honest attacker; then run the defense again from the
# same trained checkpoint with a lying attacker in the pruning rounds (no retraining).
# Tables land in <results-folder>/table_<variant>.md (honest, <lie>, reverse, deltasearch, step5,
# majority, table3, table1, table5).
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
# The other lie, and the delta search instead of a fixed delta = 3, on the same trained models.
for pair in $pairs; do
  v=${pair%:*}; t=${pair#*:}
  [ -f "$out/honest_${v}_${t}/checkpoint.pt" ] || continue
  from=("attack.source_label=$v" "attack.target_label=$t" "checkpoint=$out/honest_${v}_${t}/checkpoint.pt"
        pretrain_rounds=0 num_rounds=0)
  run "reverse_${v}_${t}" experiment=wu2020_table4 "${from[@]}" pruning.lie=reverse
  run "deltasearch_${v}_${t}" experiment=wu2020_table4 "${from[@]}" pruning.delta_search=true
done
# Table III (adjustment alone, 8/16 net) per pair; Table I (patterns); Table V (Fashion-MNIST).
for pair in $pairs; do
  v=${pair%:*}; t=${pair#*:}
  run "table3_${v}_${t}" experiment=wu2020_table3 attack.source_label="$v" attack.target_label="$t"
done
for pixels in 1 3 5 7 9; do run "table1_${pixels}px" experiment=wu2020_table1 attack.pattern_pixels="$pixels"; done
for t in 0 1 2; do run "table5_9_${t}" experiment=wu2020_table5 attack.target_label="$t"; done
# "Is it our attacker?": 3->9 with alpha = 3 and no auxiliary data, after the cached clean rounds
# and from scratch (30 rounds, the attacker in every one).
run a3_3_9 experiment=wu2020_table4 attack.source_label=3 attack.target_label=9 attack.boost_factor=3 \
  attack.aux_train_samples=0 num_rounds=8
run scratch_a3_3_9 experiment=wu2020_table4 attack.source_label=3 attack.target_label=9 \
  attack.boost_factor=3 attack.aux_train_samples=0 pretrain_rounds=0 num_rounds=30
for variant in honest "$lie" reverse deltasearch step5 majority table3 table1 table5; do
  "$py" -m launcher.pruning_table "$out"/"${variant}"_* -o "$out/table_${variant}.md"
done
