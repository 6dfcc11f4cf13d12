#!/bin/sh
# nft-dnat.sh - NAT example command for the spad `script` backend (see README.md next to it).
#
# Forwards a knocking client to an internal service through this gateway: a DNAT of the
# external port to the grant's internal host and port, for that client only, and only on the
# interface and address the knock came in on; plus a forward accept for exactly that flow.
# Everything lives in timed nftables maps and sets of its own table, `inet spa_nat` by
# default, created on first use (or with `nft-dnat.sh --init`):
#
#   map dnat4 / dnat6     iifname . client . ingress address . proto . external port
#                           : internal address . internal port          (flags timeout)
#   set fwd4 / fwd6       client . ingress address . internal address . proto . internal port
#   set guarded4/guarded6 internal address . proto . port: services nobody reaches through
#                         this gateway without a grant; YOU fill it, e.g.
#                         nft add element inet spa_nat guarded4 '{ 10.0.0.2 . tcp . 22 }'
#   chain prerouting      nat, dstnat - 1: DNAT by the maps
#   chain forward         filter - 1: established/related accepted, DNAT-ed flows in fwd*
#                         accepted, anything else to a guarded service dropped
#
# Elements carry the grant's timeout, so the kernel closes the door by itself even if spad
# dies; established connections outlive the window (conntrack), like with fwknop. Inspect:
# nft list table inet spa_nat. Remove everything: nft delete table inet spa_nat.
#
# Arguments: the ingress interface and address ({ingress_if} {ingress_addr}): naming them in
# argv also tells spad that what is opened depends on them. Everything else comes from the
# SPA_* environment: SPA_ACTION open|close|check, SPA_NAT (must be dnat), SPA_FAMILY,
# SPA_SOURCE, SPA_PROTO, SPA_PORT, SPA_NAT_ADDR, SPA_NAT_PORT, SPA_TIMEOUT; SPA_SOURCE_PORT
# must be empty (its maps key whole addresses: a grant bound to the client's source port is
# refused rather than widened to every host behind the client's NAT).
# Optional: NFT (the nft program, default nft), NFT_TABLE (default spa_nat).
#
# Exit: 0 done (open/close) or present (check); 1 absent (check); 2 refused input; other
# codes come from nft.
#
# spad.toml (the access stanza sets force_nat, or clients ask with fwknop -N; [nat]
# enable_forwarding = true; net.ipv4.ip_forward = 1):
#   [firewall.script]
#   open  = ["/etc/spad/script/nft-dnat.sh", "{ingress_if}", "{ingress_addr}"]
#   close = ["/etc/spad/script/nft-dnat.sh", "{ingress_if}", "{ingress_addr}"]
#   check = ["/etc/spad/script/nft-dnat.sh", "{ingress_if}", "{ingress_addr}"]
#   reopen_on_extend = true    # a re-knock pushes the elements' timeouts out

set -eu

NFT=${NFT:-nft}
TABLE=${NFT_TABLE:-spa_nat}

die() {
    echo "nft-dnat.sh: $*" >&2
    exit 2
}

case "$TABLE" in
    '' | *[!A-Za-z0-9_]*) die "bad NFT_TABLE '$TABLE'" ;;
esac

ensure_table() {
    if "$NFT" list table inet "$TABLE" >/dev/null 2>&1; then
        return 0
    fi
    "$NFT" -f - <<NFT
table inet $TABLE {
    map dnat4 { type ifname . ipv4_addr . ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; flags timeout; }
    map dnat6 { type ifname . ipv6_addr . ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; flags timeout; }
    set fwd4 { type ipv4_addr . ipv4_addr . ipv4_addr . inet_proto . inet_service; flags timeout; }
    set fwd6 { type ipv6_addr . ipv6_addr . ipv6_addr . inet_proto . inet_service; flags timeout; }
    set guarded4 { type ipv4_addr . inet_proto . inet_service; }
    set guarded6 { type ipv6_addr . inet_proto . inet_service; }
    chain prerouting {
        type nat hook prerouting priority dstnat - 1; policy accept;
        dnat ip to iifname . ip saddr . ip daddr . meta l4proto . th dport map @dnat4
        dnat ip6 to iifname . ip6 saddr . ip6 daddr . meta l4proto . th dport map @dnat6
    }
    chain forward {
        type filter hook forward priority filter - 1; policy accept;
        ct state established,related accept
        ct status dnat ip saddr . ct original ip daddr . ip daddr . meta l4proto . th dport @fwd4 accept
        ct status dnat ip6 saddr . ct original ip6 daddr . ip6 daddr . meta l4proto . th dport @fwd6 accept
        ip daddr . meta l4proto . th dport @guarded4 drop
        ip6 daddr . meta l4proto . th dport @guarded6 drop
    }
}
NFT
}

if [ "${1:-}" = "--init" ]; then
    ensure_table
    exit 0
fi

# Every value that goes into an nft command is checked against a strict pattern first: nft
# parses its arguments as one command line, so nothing unchecked may reach it.
[ $# -eq 2 ] || die "usage: nft-dnat.sh INGRESS_IF INGRESS_ADDR (or --init)"
IIF=$1
INGRESS=$2
case "${SPA_ACTION:-}" in
    open | close | check) ;;
    *) die "SPA_ACTION must be open, close or check (got '${SPA_ACTION:-}')" ;;
esac
[ "${SPA_NAT:-}" = dnat ] || die "only DNAT grants (force_nat, fwknop -N) are handled (got '${SPA_NAT:-}')"
[ -z "${SPA_SOURCE_PORT:-}" ] || die "grants bound to a source port are not supported by this example"
[ -n "${SPA_PORT:-}" ] || die "forward-all and per = \"grant\" are not supported (needs a port)"
case "$IIF" in
    '' | ????????????????* | *[!A-Za-z0-9_.-]*) die "bad or unknown ingress interface '$IIF'" ;;
esac
case "${SPA_PROTO:-}" in
    tcp | udp) ;;
    *) die "bad protocol '${SPA_PROTO:-}'" ;;
esac
for port in "$SPA_PORT" "${SPA_NAT_PORT:-}"; do
    case "$port" in
        '' | *[!0-9]*) die "bad port '$port'" ;;
    esac
done
case "${SPA_FAMILY:-}" in
    ipv4) V=4 ADDR='*[!0-9.]*' ;;
    ipv6) V=6 ADDR='*[!0-9a-fA-F:]*' ;;
    *) die "bad family '${SPA_FAMILY:-}'" ;;
esac
for addr in "${SPA_SOURCE:-}" "$INGRESS" "${SPA_NAT_ADDR:-}"; do
    # shellcheck disable=SC2254 # the pattern is chosen above, by family
    case "$addr" in
        '' | $ADDR) die "bad $SPA_FAMILY address '$addr'" ;;
    esac
done
TIMEOUT=${SPA_TIMEOUT:-0}
case "$TIMEOUT" in
    '' | *[!0-9]*) die "bad timeout '$TIMEOUT'" ;;
esac
# An element needs a timeout of at least one second.
[ "$TIMEOUT" -ge 1 ] || TIMEOUT=1

KEY="\"$IIF\" . $SPA_SOURCE . $INGRESS . $SPA_PROTO . $SPA_PORT"
TO="$SPA_NAT_ADDR . $SPA_NAT_PORT"
FWD="$SPA_SOURCE . $INGRESS . $SPA_NAT_ADDR . $SPA_PROTO . $SPA_NAT_PORT"

present() {
    "$NFT" get element inet "$TABLE" "dnat$V" "{ $KEY }" >/dev/null 2>&1
}

case "$SPA_ACTION" in
    open)
        ensure_table
        # add (no-op if present), delete, add with the new timeout: one transaction, so an
        # element being refreshed is never missing, and opening twice is harmless.
        "$NFT" -f - <<NFT
add element inet $TABLE fwd$V { $FWD }
delete element inet $TABLE fwd$V { $FWD }
add element inet $TABLE fwd$V { $FWD timeout ${TIMEOUT}s }
add element inet $TABLE dnat$V { $KEY : $TO }
delete element inet $TABLE dnat$V { $KEY }
add element inet $TABLE dnat$V { $KEY timeout ${TIMEOUT}s : $TO }
NFT
        ;;
    close)
        # Already gone (expired, removed by hand, table missing) counts as closed. The DNAT
        # goes first: without it no new flow can match the forward accept.
        if present; then
            "$NFT" delete element inet "$TABLE" "dnat$V" "{ $KEY }"
        fi
        if "$NFT" get element inet "$TABLE" "fwd$V" "{ $FWD }" >/dev/null 2>&1; then
            "$NFT" delete element inet "$TABLE" "fwd$V" "{ $FWD }"
        fi
        ;;
    check)
        if present; then exit 0; else exit 1; fi
        ;;
esac
