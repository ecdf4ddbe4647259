#!/usr/bin/env bash
# Lays out keys, certificates and configs for a masternode network.
#
#   certs/provision.sh INVENTORY OUTDIR
#
# INVENTORY has one "name ip:port" per line (blank lines and # comments are
# skipped). Writes OUTDIR/network.toml and, per node, OUTDIR/NAME/node.key (0600),
# node.crt and masternode.toml (admin API on 127.0.0.1, port = p2p port + 1).
#
# network.toml is the genesis: written once, on the first run, and never again
# (the network id is its hash; later changes to the member set are made on
# chain). A node added to the inventory after that is a joiner: it gets its key
# and masternode.toml, and the script prints the `masternode member add` line
# the members run to approve it.
#
# Idempotent: existing keys are never replaced, an existing masternode.toml is
# left alone (operators may have edited it), and network.toml is never rewritten.
# Any error (bad line, duplicate name or address, no masternode binary) is
# reported before anything is written.
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
if [ -e "$network" ]; then
  # The genesis stays as it is; nodes it does not name are joiners.
  for i in "${!names[@]}"; do
    if ! grep -q "^id = \"${ids[$i]}\"$" "$network"; then
      echo "provision: ${names[$i]} is a joiner (not in the genesis $network); on members holding more than 2/3 of the set run:"
      echo "  masternode member add --id ${ids[$i]} --addr ${addrs[$i]} --config NODE/masternode.toml"
    fi
  done
  exit 0
fi
name=${NETWORK_NAME:-masternode}
genesis=$(($(date +%s) * 1000))
interval=${BLOCK_INTERVAL_MS:-1000}
min_active=${MIN_ACTIVE:-3}
tmp=$(mktemp "$outdir/.network.toml.XXXXXX")
{
  printf 'name = "%s"\ngenesis_time_ms = %s\nblock_interval_ms = %s\nmin_active = %s\n' "$name" "$genesis" "$interval" "$min_active"
  for i in "${!names[@]}"; do
    printf '\n# %s\n[[masternode]]\nid = "%s"\naddr = "%s"\n' "${names[$i]}" "${ids[$i]}" "${addrs[$i]}"
  done
} >"$tmp"
chmod 0644 "$tmp"
mv "$tmp" "$network"
echo "provision: wrote $network (genesis, ${#names[@]} masternodes)"
