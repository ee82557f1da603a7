#!/usr/bin/env bash
# `idlegate gateway` as a router in a network namespace of its own, between a backend pool
# member and an internet host, each joined to it by a veth pair (run as root):
#
#   vm1 192.0.2.11 ── 192.0.2.1  gw  203.0.113.1 ── 203.0.113.100 internet
#                        idlegate gateway: frontend 203.0.113.10
#
#   IDLEGATE=target/debug/idlegate examples/gateway-in-a-namespace.sh    # Ctrl-C removes it all
set -euo pipefail

IDLEGATE=${IDLEGATE:-idlegate}
N=igw$$                                  # this run's namespaces: $N-gw, $N-vm1, $N-internet
GW=$N-gw VM=$N-vm1 NET=$N-internet
CONFIG=$(mktemp --suffix=.toml)

cleanup() {
    if [[ -n ${PID:-} ]]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    for ns in "$GW" "$VM" "$NET"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -f "$CONFIG" "${CONTROL:-}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for ns in "$GW" "$VM" "$NET"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip netns exec "$GW" sysctl -qw net.ipv4.ip_forward=1
ip -n "$GW" link add to-vm1 type veth peer name eth0 netns "$VM"
ip -n "$GW" link add to-internet type veth peer name eth0 netns "$NET"
ip -n "$GW" addr add 192.0.2.1/24 dev to-vm1
ip -n "$GW" addr add 203.0.113.1/24 dev to-internet
ip -n "$VM" addr add 192.0.2.11/24 dev eth0
ip -n "$NET" addr add 203.0.113.100/24 dev eth0
ip -n "$GW" link set to-vm1 up
ip -n "$GW" link set to-internet up
ip -n "$VM" link set eth0 up
ip -n "$NET" link set eth0 up
ip -n "$VM" route add default via 192.0.2.1
# The frontend 203.0.113.10 is the gateway's, not an address of gw (gw's own stack would
# answer it), so nobody answers ARP for it: route it via gw's on-link address instead.
ip -n "$NET" route add 203.0.113.10/32 via 203.0.113.1

# Every packet a host sends through gw goes into the gateway: from the internet into its
# outside TUN (table 100), from the pool into its inside TUN (table 101). What the gateway
# writes back arrives on a TUN, matches neither rule and is routed by destination (main
# table) out of the right veth. gw's own addresses still work: the local table comes first.
# rp_filter may stay strict: its reverse lookup uses the forward route's output device as
# input device, so these same rules make each TUN the expected way back.
ip -n "$GW" rule add iif to-internet lookup 100
ip -n "$GW" rule add iif to-vm1 lookup 101
# Fail closed: without the gateway (and its TUNs), drop rather than forward untranslated.
ip -n "$GW" route add blackhole default table 100 metric 100
ip -n "$GW" route add blackhole default table 101 metric 100

cat > "$CONFIG" <<'EOF'
profile = "azure-lb"
time_scale = 60                 # Azure's 4 min idle timeout becomes 4 s

[[frontend]]
name = "public"
address = "203.0.113.10"

[[backend_pool]]
name = "vms"
members = [{ name = "vm1", address = "192.0.2.11" }]

[[lb_rule]]
name = "app"
frontend = "public"
protocol = "tcp"
frontend_port = 7000
backend_pool = "vms"
backend_port = 7000

[[outbound_rule]]
name = "egress"
frontend = "public"
backend_pool = "vms"
EOF

# The gateway creates igw-inside and igw-outside in gw and brings them up (outside last);
# routes into them can only be added once they are up.
CONTROL=$(dirname "$CONFIG")/igw$$.sock    # where `idlegate flows --control` asks
ip netns exec "$GW" "$IDLEGATE" gateway --config "$CONFIG" --control "$CONTROL" &
PID=$!
for i in $(seq 100); do                  # up to 10 s
    ip -n "$GW" link show dev igw-outside up 2>/dev/null | grep -q UP && break
    if ((i == 100)) || ! kill -0 "$PID" 2>/dev/null; then
        echo "the gateway did not start" >&2
        exit 1
    fi
    sleep 0.1
done
ip -n "$GW" route add default dev igw-outside table 100
ip -n "$GW" route add default dev igw-inside table 101

cat <<EOF
ready. In another terminal (as root):
  ip netns exec $VM python3 -m http.server 7000       # a server on the member
  ip netns exec $NET curl http://203.0.113.10:7000/       # in through the LB rule
  ip netns exec $NET python3 -m http.server 8000      # a server on the internet
  ip netns exec $VM curl http://203.0.113.100:8000/       # out: it sees 203.0.113.10
  $IDLEGATE flows --control $CONTROL                      # the gateway's flows
Ctrl-C stops the gateway and removes the namespaces.
EOF
wait "$PID"
