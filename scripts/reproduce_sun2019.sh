#!/usr/bin/env bash
# Every run behind docs/REPRODUCTION.md's Sun et al. section, then its figures.
#   scripts/reproduce_sun2019.sh [results-folder] [extra hydra overrides, e.g. scale=paper]
# Runs one after another (each takes the machine); the clean pretrained model is trained by the
# first run and reused by the rest. Figures land in <results-folder>/figures/.
set -euo pipefail
out=${1:-results/sun2019}; shift || true
extra=("data.root=${DATA_ROOT:-../shared/data}" "$@")
source "$(dirname "$0")/runs.sh"
mkdir -p "$out/figures"
run clean        experiment=sun2019_clean
run fig1a        experiment=sun2019_fig1
run fig4a_M3     experiment=sun2019_fig4a defense.norm_bound=3
run fig4a_M5     experiment=sun2019_fig4a defense.norm_bound=5
run fig4b_s0     experiment=sun2019_fig4b defense.noise_std=0
run fig4b_s0025  experiment=sun2019_fig4b defense.noise_std=0.025
run fig4b_s0158  experiment=sun2019_fig4b defense.noise_std=0.158   # variance 0.025, the paper's words
run fig2a        experiment=sun2019_fig2
run fig4a_M10    experiment=sun2019_fig4a defense.norm_bound=10
run fig1c        experiment=sun2019_fig1 attack.frequency=10 attack.num_malicious=12
run fig3_10      experiment=sun2019_fig3 attack.num_backdoor_tasks=10
run fig1b        experiment=sun2019_fig1 attack.schedule=random
plot=${FLBACKDOOR_PLOT:-flbackdoor-plot}
"$plot" "$out/fig1a" "$out/fig1b" "$out/fig1c" --label "(a) f=1" --label "(b) random, 118 attackers" \
  --label "(c) f=10" --title "Fig. 1: boosted attack, no defense" -o "$out/figures/fig1.png"
"$plot" "$out/fig2a" --label "(a) M=10, f=1" --title "Fig. 2: norm-bounded attack, no defense" \
  -o "$out/figures/fig2.png"
"$plot" "$out/fig3_10" "$out/fig2a" --label "10 tasks" --label "30 tasks" \
  --title "Fig. 3: backdoor size, norm bound 10" -o "$out/figures/fig3.png"
"$plot" "$out/clean" "$out/fig4a_M3" "$out/fig4a_M5" "$out/fig4a_M10" --label "unattacked" \
  --label "M=3" --label "M=5" --label "M=10" --title "Fig. 4(a): norm clipping" \
  -o "$out/figures/fig4a.png"
"$plot" "$out/clean" "$out/fig4b_s0" "$out/fig4b_s0025" "$out/fig4b_s0158" --label "unattacked" \
  --label "M=5, sigma=0" --label "M=5, sigma=0.025" --label "M=5, sigma=0.158" --title "Fig. 4(b): weak DP" -o "$out/figures/fig4b.png"
