#!/usr/bin/env bash
# Every run behind docs/REPRODUCTION.md's ABL section.
#   scripts/reproduce_abl2021.sh [results-folder] [extra hydra overrides, e.g. scale=paper]
# Runs one after another; a run whose summary.json exists is skipped.
set -euo pipefail
out=${1:-results/abl2021}; shift || true
extra=("data.root=${DATA_ROOT:-../shared/data}" "$@")
source "$(dirname "$0")/runs.sh"
mkdir -p "$out"
for data in mnist fashion_mnist; do
  run "${data}_clean"       experiment=abl2021_centralized_badnets dataset=$data poisoning=none client_defense=none
  for attack in badnets blend sig; do
    run "${data}_${attack}_none" experiment=abl2021_centralized_$attack dataset=$data client_defense=none
    run "${data}_${attack}_abl"  experiment=abl2021_centralized_$attack dataset=$data
  done
done
run federated_none experiment=abl2021_federated_badnets client_defense=none
run federated_abl  experiment=abl2021_federated_badnets
# The oracle bound: only the 3 poisoned clients run ABL (no client can know this in practice).
run federated_abl_oracle experiment=abl2021_federated_badnets client_defense.clients=poisoned
# One line per run: final CA, ASR and isolation precision.
for s in "$out"/*/summary.json; do
  python3 -c "import json,sys; s=json.load(open(sys.argv[1])); f=s['final']; \
print(sys.argv[1].split('/')[-2], 'CA=%.4f' % f['main_accuracy'], \
'ASR=%s' % (round(f['backdoor_accuracy'], 4) if 'backdoor_accuracy' in f else '-'), \
'isolation_precision=%s' % f.get('isolation_precision', '-'))" "$s"
done
