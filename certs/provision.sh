#!/usr/bin/env bash
# Lays out keys, certificates and configs for a masternode network.
#
#   certs/provision.sh INVENTORY OUTDIR
#
# INVENTORY has one "name ip:port [admin]" per line (blank lines and # comments
# are skipped). Writes OUTDIR/network.toml and, per node, OUTDIR/NAME/node.key
# (0600), node.crt and masternode.toml. The admin API goes on 127.0.0.1, port =
# p2p port + 1, unless the third column names it: a port (on 127.0.0.1) or a
# loopback ip:port. Nodes that share a host need an admin port each: with one p2p
# port on every node (203.0.113.7:24100, 203.0.113.8:24100), give them one.
#
# network.toml is the genesis: written once, on the first run, and never again
# (the network id is its hash; later changes to the member set are made on
# chain). A node added to the inventory after that is a joiner: the run that
# makes its key prints the `masternode member add` line the members run to
# approve it. Later runs do not repeat it: the chain, not the inventory, says
# who is a member (`masternode members`).
#
# Idempotent: existing keys are never replaced, an existing masternode.toml is
# left alone (operators may have edited it; a run says so when its listen or
# admin differs from the inventory), and network.toml is never rewritten. Any
# error (bad line, duplicate name or address, no masternode binary) is reported
# before anything is written.
#
# Environment: MASTERNODE (binary, default: masternode on PATH), NETWORK_NAME
# (default masternode), BLOCK_INTERVAL_MS (1000), MIN_ACTIVE (3).
set -euo pipefail

die() {
  echo "provision: $*" >&2
  exit 1
}

# The value of `key = "..."` in a TOML file, if the file has that line.
toml_value() {
  sed -n "s/^$2 *= *\"\\(.*\\)\"[[:space:]]*\$/\\1/p" "$1" | head -n 1
}

[ $# -eq 2 ] || die "usage: $0 INVENTORY OUTDIR"
inventory=$1
outdir=$2
bin=${MASTERNODE:-masternode}
command -v "$bin" >/dev/null 2>&1 || die "masternode binary not found ('$bin'); put it on PATH or set MASTERNODE=/path/to/masternode"
[ -r "$inventory" ] || die "$inventory: cannot read inventory"

names=()
addrs=()
admins=()
lineno=0
while IFS= read -r line || [ -n "$line" ]; do
  lineno=$((lineno + 1))
  line=${line%%#*}
  read -r name addr admin extra <<<"$line" || true
  [ -z "${name:-}" ] && continue
  [ -n "${extra:-}" ] && die "$inventory:$lineno: expected 'name ip:port [admin]', found extra text '$extra'"
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
    port=${BASH_REMATCH[2]}
  else
    die "$inventory:$lineno: bad address '$addr' (want ip:port or [ipv6]:port)"
  fi
  { [ "$port" -ge 1 ] && [ "$port" -le 65535 ]; } || die "$inventory:$lineno: port $port out of range 1-65535"
  # The admin API trusts whoever reaches it: loopback only from here; a
  # private address with admin_public and admin_token is a hand edit.
  if [ -z "${admin:-}" ]; then
    [ "$port" -le 65534 ] || die "$inventory:$lineno: port $port leaves no port + 1 for the admin API; give one in the third column"
    admin=127.0.0.1:$((port + 1))
  elif [[ $admin =~ ^[0-9]+$ ]]; then
    admin_port=$admin
    admin=127.0.0.1:$admin
  elif [[ $admin =~ ^127(\.[0-9]{1,3}){3}:([0-9]+)$ ]]; then
    admin_port=${BASH_REMATCH[2]}
  elif [[ $admin =~ ^\[::1\]:([0-9]+)$ ]]; then
    admin_port=${BASH_REMATCH[1]}
  else
    die "$inventory:$lineno: bad admin '$admin' (want a port, or a loopback ip:port such as 127.0.0.1:24101)"
  fi
  if [ -n "${admin_port:-}" ]; then
    { [ "$admin_port" -ge 1 ] && [ "$admin_port" -le 65535 ]; } || die "$inventory:$lineno: admin port $admin_port out of range 1-65535"
    admin_port=
  fi
  for i in "${!names[@]}"; do
    [ "${names[$i]}" = "$name" ] && die "$inventory:$lineno: duplicate name '$name'"
    [ "${addrs[$i]}" = "$addr" ] && die "$inventory:$lineno: duplicate address '$addr'"
  done
  names+=("$name")
  addrs+=("$addr")
  admins+=("$admin")
done <"$inventory"
[ ${#names[@]} -gt 0 ] || die "$inventory: no nodes"

umask 077
mkdir -p "$outdir"
network=$outdir/network.toml
ids=()
fresh=()
written=()
for i in "${!names[@]}"; do
  dir=$outdir/${names[$i]}
  mkdir -p "$dir"
  if [ -e "$dir/node.key" ]; then
    ids+=("$("$bin" id --dir "$dir")")
    fresh+=("")
  else
    ids+=("$("$bin" keygen --dir "$dir" 2>/dev/null)")
    fresh+=(1)
    echo "provision: new key for ${names[$i]}: ${ids[$i]}"
  fi
  if [ -e "$dir/masternode.toml" ]; then
    # The file wins; say where it and the inventory part, once per run.
    for key in listen admin; do
      if [ $key = listen ]; then want=${addrs[$i]}; else want=${admins[$i]}; fi
      have=$(toml_value "$dir/masternode.toml" $key)
      if [ -n "$have" ] && [ "$have" != "$want" ]; then
        echo "provision: ${names[$i]}: $dir/masternode.toml has $key = \"$have\", the inventory says $want; left as is"
      fi
    done
  else
    cat >"$dir/masternode.toml" <<TOML
network = "../network.toml"
key = "node.key"
cert = "node.crt"
listen = "${addrs[$i]}"
admin = "${admins[$i]}"
data_dir = "data"
TOML
    written+=("$i")
    echo "provision: wrote $dir/masternode.toml"
  fi
done

# An admin address that configs written now share with other nodes: fine
# where each runs on a host of its own, a clash where they share one.
reported=()
for i in ${written[@]+"${written[@]}"}; do
  for r in ${reported[@]+"${reported[@]}"}; do [ "$r" = "${admins[$i]}" ] && continue 2; done
  sharing=()
  for j in "${!names[@]}"; do
    [ "${admins[$j]}" = "${admins[$i]}" ] && sharing+=("${names[$j]}")
  done
  if [ ${#sharing[@]} -gt 1 ]; then
    echo "provision: ${sharing[*]} have admin ${admins[$i]}: fine where each runs on a host of its own; nodes that share a host need an admin port each (third column of the inventory)"
  fi
  reported+=("${admins[$i]}")
done

# Node directories the inventory no longer names (a member removed, a key
# rotated out): kept, since the script never deletes a key.
for dir in "$outdir"/*/; do
  [ -e "$dir/node.key" ] || continue
  name=$(basename "$dir")
  known=
  for n in "${names[@]}"; do [ "$n" = "$name" ] && known=1; done
  [ -n "$known" ] || echo "provision: $outdir/$name is not in the inventory; left as is (destroy its key once it has left the member set)"
done

if [ -e "$network" ]; then
  # The genesis stays as it is; nodes it does not name are joiners. Only the
  # run that made a joiner's key prints its approval: from then on the chain
  # says whether it was added, moved or removed.
  later=()
  for i in "${!names[@]}"; do
    grep -q "^id = \"${ids[$i]}\"$" "$network" && continue
    if [ -n "${fresh[$i]}" ]; then
      echo "provision: ${names[$i]} is a joiner (not in the genesis $network); on members holding more than 2/3 of the set run:"
      echo "  masternode member add --id ${ids[$i]} --addr ${addrs[$i]} --config NODE/masternode.toml"
    else
      later+=("${names[$i]}")
    fi
  done
  if [ ${#later[@]} -gt 0 ]; then
    echo "provision: not in the genesis: ${later[*]}; \`masternode members\` shows whether they are in the set"
  fi
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
