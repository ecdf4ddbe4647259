#!/usr/bin/env bash
# Verifies both units with systemd-analyze and checks that their exposure score
# stays at or below 2.0. Usage: systemd/check.sh PATH_TO_MASTERNODE_BINARY
set -euo pipefail
bin=$(readlink -f "${1:?usage: $0 PATH_TO_MASTERNODE_BINARY}")
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# verify wants ExecStart to exist: point the copies at the built binary.
sed "s|/usr/local/bin/masternode|$bin|" "$here/masternode.service" >"$tmp/masternode.service"
sed "s|/usr/local/bin/masternode|$bin|" "$here/masternode@.service" >"$tmp/masternode@.service"
cp "$tmp/masternode@.service" "$tmp/masternode@node1.service"

status=0
for unit in masternode.service masternode@node1.service; do
  if ! out=$(systemd-analyze verify --man=no "$tmp/$unit" 2>&1); then
    echo "systemd-analyze verify $unit failed:"; echo "$out"; status=1
  elif [ -n "$out" ]; then
    echo "systemd-analyze verify $unit warned:"; echo "$out"; status=1
  fi
  score=$(systemd-analyze security --offline=true "$tmp/$unit" 2>&1 | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
  if [ -z "$score" ]; then
    echo "no exposure score for $unit"; status=1
  elif awk -v s="$score" 'BEGIN { exit !(s > 2.0) }'; then
    echo "$unit: exposure $score is above 2.0"; status=1
  else
    echo "$unit: verify clean, exposure $score"
  fi
done
exit $status
