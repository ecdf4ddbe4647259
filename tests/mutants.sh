#!/usr/bin/env bash
# The mutation command: applies each one-line mutation of tests/mutants.txt
# alone (a rule of Algorithm 1 the consensus core implements, or a resource
# budget of the driver), runs the simulation on it in release, and prints
# which were caught, by which invariant and seed. Every mutation must be
# caught; one that survives is a scenario the simulation is missing.
#
#   tests/mutants.sh                 every mutation, SIM_SCENARIOS=2000
#   tests/mutants.sh L28-polka ...   only these
#   SIM_SCENARIOS=500 tests/mutants.sh
#   MUTANTS_BASELINE=0 tests/mutants.sh   skip the run of the unmutated tree
#
# Each mutation rebuilds the library in release and runs scenarios until the
# first violation (SIM_FAIL_FAST=1); the mutated file is restored afterwards,
# also on Ctrl-C. The builds go to target/mutants (CARGO_TARGET_DIR), in
# release with incremental compilation: the first builds every dependency,
# each mutation after it recompiles only the crate (about half a minute), and
# target/release is left as it was. The table at the end is Markdown
# (docs/simulation.md has the last full one). Exit status 1 when a mutation survived.
set -euo pipefail
cd "$(dirname "$0")/.."

scenarios=${SIM_SCENARIOS:-2000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/mutants}
export CARGO_PROFILE_RELEASE_INCREMENTAL=${CARGO_PROFILE_RELEASE_INCREMENTAL:-true}
list=tests/mutants.txt
work=$(mktemp -d)
trap 'restore; rm -rf "$work"' EXIT
backup=""
target=""

restore() {
  if [ -n "$backup" ] && [ -n "$target" ]; then
    cp "$backup" "$target"
    backup=""
  fi
}

# Runs the simulation; prints "caught <Kind> <seed> <detail>" or "survived".
simulate() {
  local log=$1
  if ! SIM_FAIL_FAST=1 SIM_SCENARIOS=$scenarios cargo test --release --test simulation simulation_many_scenarios \
      -- --ignored --nocapture >"$log" 2>&1; then
    if ! grep -q '^simulation: ' "$log"; then
      echo "build-failed"
      return
    fi
  fi
  local first
  first=$(grep -m1 -E '^violation: seed [0-9]+' "$log" || true)
  if [ -z "$first" ]; then
    echo "survived"
    return
  fi
  # violation: seed S step T (headline): Kind: detail
  local seed kind detail
  seed=$(sed -E 's/^violation: seed ([0-9]+).*/\1/' <<<"$first")
  kind=$(sed -E 's/^violation: seed [0-9]+ step [0-9]+ \(.*\): ([A-Za-z]+): .*/\1/' <<<"$first")
  detail=$(sed -E 's/^violation: seed [0-9]+ step [0-9]+ \(.*\): [A-Za-z]+: //' <<<"$first" | cut -c1-160)
  echo "caught $kind $seed $detail"
}

apply() {
  local file=$1 pattern=$2 replacement=$3 nth=$4
  python3 - "$file" "$pattern" "$replacement" "$nth" <<'PY'
import sys
path, pattern, replacement, nth = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
lines = open(path).read().split("\n")
hits = [i for i, l in enumerate(lines) if pattern in l]
if nth:
    k = int(nth)
    if len(hits) < k:
        sys.exit(f"{path}: fewer than {k} lines hold {pattern!r}")
    hits = [hits[k - 1]]
elif len(hits) != 1:
    sys.exit(f"{path}: {len(hits)} lines hold {pattern!r}, not exactly one (give @N)")
i = hits[0]
lines[i] = lines[i].replace(pattern, replacement, 1)
open(path, "w").write("\n".join(lines))
print(i + 1)
PY
}

if [ "${MUTANTS_BASELINE:-1}" != 0 ] && [ $# -eq 0 ]; then
  echo "baseline: the unmutated tree, $scenarios scenarios"
  base=$(simulate "$work/baseline.log")
  if [ "$base" != survived ]; then
    echo "the unmutated tree fails ($base): fix that first (log: $work/baseline.log)" >&2
    cp "$work/baseline.log" target/mutants-baseline.log 2>/dev/null || true
    exit 2
  fi
fi

table="$work/table.md"
printf '| mutation | rule it breaks | line | result | invariant | seed | time |\n|---|---|---|---|---|---|---|\n' >"$table"
survivors=0
while IFS=$'\t' read -r name spec pattern replacement rule; do
  if [ $# -gt 0 ] && [[ " $* " != *" $name "* ]]; then
    continue
  fi
  file=${spec%@*}
  nth=""
  if [[ $spec == *@* ]]; then nth=${spec#*@}; fi
  target=$file
  backup="$work/original"
  cp "$file" "$backup"
  started=$(date +%s)
  if ! line=$(apply "$file" "$pattern" "$replacement" "$nth"); then
    restore
    echo "$name: does not apply" >&2
    printf '| %s | %s | %s | does not apply | | | |\n' "$name" "$rule" "$file" >>"$table"
    survivors=$((survivors + 1))
    continue
  fi
  echo "== $name ($file:$line): $rule"
  result=$(simulate "$work/$name.log")
  restore
  took=$(( $(date +%s) - started ))
  read -r verdict kind seed detail <<<"$result" || true
  case $verdict in
    caught)
      echo "   caught by $kind, seed $seed ($took s): $detail"
      printf '| %s | %s | %s:%s | caught | %s | %s | %s s |\n' "$name" "$rule" "$file" "$line" "$kind" "$seed" "$took" >>"$table"
      ;;
    *)
      survivors=$((survivors + 1))
      cp "$work/$name.log" "target/mutant-$name.log" 2>/dev/null || true
      echo "   $verdict ($took s); log: target/mutant-$name.log"
      printf '| %s | %s | %s:%s | **%s** | | | %s s |\n' "$name" "$rule" "$file" "$line" "$verdict" "$took" >>"$table"
      ;;
  esac
done < <(grep -v -e '^#' -e '^$' "$list")

echo
cat "$table"
echo
if [ "$survivors" -gt 0 ]; then
  echo "$survivors mutation(s) not caught"
  exit 1
fi
echo "every mutation caught within $scenarios scenarios"
