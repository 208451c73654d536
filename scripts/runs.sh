# Sourced by scripts/reproduce_*.sh: `run <name> <overrides...>` runs one flbackdoor experiment
# into $out/<name> (log beside it), skipping it when its summary.json exists, so a script can be
# started again after an interruption. Needs $out set; extra Hydra overrides come from $extra.
fb=${FLBACKDOOR:-flbackdoor}
run() {
  local name=$1; shift
  if [ -f "$out/$name/summary.json" ]; then echo "skip $name (done)"; return; fi
  echo "== $name: $*"
  "$fb" "${extra[@]}" "$@" "hydra.run.dir=$out/$name" > "$out/$name.log" 2>&1 || echo "FAILED $name (see $out/$name.log)"
}
