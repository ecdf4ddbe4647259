#!/usr/bin/env bash
# Lays out keys, certificates and configs for a masternode network.
#
#   certs/provision.sh INVENTORY OUTDIR
#
# INVENTORY has one "name ip:port" per line (blank lines and # comments are
# skipped). Writes OUTDIR/network.toml and, per node, OUTDIR/NAME/node.key (0600),
# node.crt and masternode.toml (admin API on 127.0.0.1, port = p2p port + 1).
#
# Idempotent: existing keys are never replaced, an existing masternode.toml is
# left alone (operators may have edited it), and network.toml is rewritten only
# when the member list changed; its name and genesis time are kept. Any error
# (bad line, duplicate name or address, no masternode binary) is reported before
# anything is written.
#
# Environment: MASTERNODE (binary, default: masternode on PATH), NETWORK_NAME
# (default masternode), BLOCK_INTERVAL_MS (1000), MIN_ACTIVE (3).
set -euo pipefail

die() {
  echo "provision: $*" >&2
  exit 1
}

[ $# -eq 2 ] || die "usage: $0 INVENTORY OUTDIR"
inventory=$1
outdir=$2
bin=${MASTERNODE:-masternode}
command -v "$bin" >/dev/null 2>&1 || die "masternode binary not found ('$bin'); put it on PATH or set MASTERNODE=/path/to/masternode"
[ -r "$inventory" ] || die "$inventory: cannot read inventory"

names=()
addrs=()
ips=()
ports=()
lineno=0
while IFS= read -r line || [ -n "$line" ]; do
  lineno=$((lineno + 1))
  line=${line%%#*}
  read -r name addr extra <<<"$line" || true
  [ -z "${name:-}" ] && continue
  [ -n "${extra:-}" ] && die "$inventory:$lineno: expected 'name ip:port', found extra text '$extra'"
  [ -n "${addr:-}" ] || die "$inventory:$lineno: '$name' has no address"
  [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "$inventory:$lineno: bad node name '$name' (letters, digits, . _ -)"
  if [[ $addr =~ ^([0-9]{1,3}(\.[0-9]{1,3}){3}):([0-9]+)$ ]]; then
    ip=${BASH_REMATCH[1]}
    port=${BASH_REMATCH[3]}
    IFS=. read -r a b c d <<<"$ip"
    for octet in "$a" "$b" "$c" "$d"; do
      [ "$octet" -le 255 ] || die "$inventory:$lineno: bad IPv4 address '$ip'"
    done
  elif [[ $addr =~ ^\[([0-9A-Fa-f:.]+)\]:([0-9]+)$ ]]; then
    ip="[${BASH_REMATCH[1]}]"
    port=${BASH_REMATCH[2]}
  else
    die "$inventory:$lineno: bad address '$addr' (want ip:port or [ipv6]:port)"
  fi
  { [ "$port" -ge 1 ] && [ "$port" -le 65534 ]; } || die "$inventory:$lineno: port $port out of range 1-65534 (admin uses port + 1)"
  for i in "${!names[@]}"; do
    [ "${names[$i]}" = "$name" ] && die "$inventory:$lineno: duplicate name '$name'"
    [ "${addrs[$i]}" = "$addr" ] && die "$inventory:$lineno: duplicate address '$addr'"
  done
  names+=("$name")
  addrs+=("$addr")
  ips+=("$ip")
  ports+=("$port")
done <"$inventory"
[ ${#names[@]} -gt 0 ] || die "$inventory: no nodes"

umask 077
mkdir -p "$outdir"
ids=()
for i in "${!names[@]}"; do
  dir=$outdir/${names[$i]}
  mkdir -p "$dir"
  if [ -e "$dir/node.key" ]; then
    ids+=("$("$bin" id --dir "$dir")")
  else
    ids+=("$("$bin" keygen --dir "$dir" 2>/dev/null)")
    echo "provision: new key for ${names[$i]}: ${ids[$i]}"
  fi
  if [ ! -e "$dir/masternode.toml" ]; then
    admin_port=$((ports[i] + 1))
    cat >"$dir/masternode.toml" <<TOML
network = "../network.toml"
key = "node.key"
cert = "node.crt"
listen = "${addrs[$i]}"
admin = "127.0.0.1:$admin_port"
data_dir = "data"
TOML
    echo "provision: wrote $dir/masternode.toml"
  fi
done

network=$outdir/network.toml
name=${NETWORK_NAME:-masternode}
genesis=$(($(date +%s) * 1000))
interval=${BLOCK_INTERVAL_MS:-1000}
min_active=${MIN_ACTIVE:-3}
if [ -e "$network" ]; then
  # Keep the network's identity; only the member list may change.
  name=$(sed -n 's/^name = "\(.*\)"$/\1/p' "$network")
  genesis=$(sed -n 's/^genesis_time_ms = \([0-9]*\)$/\1/p' "$network")
  interval=$(sed -n 's/^block_interval_ms = \([0-9]*\)$/\1/p' "$network")
  min_active=$(sed -n 's/^min_active = \([0-9]*\)$/\1/p' "$network")
  if [ -z "$name" ] || [ -z "$genesis" ] || [ -z "$interval" ] || [ -z "$min_active" ]; then
    die "$network: cannot read name, genesis_time_ms, block_interval_ms and min_active from it"
  fi
fi
tmp=$(mktemp "$outdir/.network.toml.XXXXXX")
{
  printf 'name = "%s"\ngenesis_time_ms = %s\nblock_interval_ms = %s\nmin_active = %s\n' "$name" "$genesis" "$interval" "$min_active"
  for i in "${!names[@]}"; do
    printf '\n# %s\n[[masternode]]\nid = "%s"\naddr = "%s"\n' "${names[$i]}" "${ids[$i]}" "${addrs[$i]}"
  done
} >"$tmp"
if [ -e "$network" ] && cmp -s "$tmp" "$network"; then
  rm -f "$tmp"
else
  chmod 0644 "$tmp"
  mv "$tmp" "$network"
  echo "provision: wrote $network (${#names[@]} masternodes)"
fi
