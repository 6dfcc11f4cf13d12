#!/bin/sh
# nft-set.sh - example command for the spad `script` backend (see README.md next to it).
#
# Keeps granted (source, protocol, port) triples in timed nftables sets of its own table,
# `inet spa_script` by default, created on first use:
#
#   set allow4 / allow6   ipv4_addr|ipv6_addr . inet_proto . inet_service, flags timeout
#   set guarded           inet_proto . inet_service: the services to hide; YOU fill it, e.g.
#                         nft add element inet spa_script guarded '{ tcp . 22 }'
#   chain input           hook input, priority filter - 1: established/related accepted,
#                         allowed triples accepted, anything else to a guarded service dropped
#
# Elements carry the grant's timeout, so the kernel closes the door by itself even if spad
# dies. Inspect: nft list table inet spa_script. Remove everything: nft delete table inet
# spa_script.
#
# Reads everything from the SPA_* environment (no arguments needed):
#   SPA_ACTION open|close|check, SPA_FAMILY, SPA_SOURCE, SPA_PROTO, SPA_PORT, SPA_TIMEOUT,
#   SPA_NAT (must be empty: this example does local access only), SPA_SOURCE_PORT (must be
#   empty: its sets hold whole addresses, so a grant bound to the client's source port, which
#   keeps out the other hosts behind the client's NAT, is refused rather than widened).
# Optional: NFT (the nft program, default nft), NFT_TABLE (default spa_script); set them with
# `env = { ... }` in [firewall.script].
#
# Exit: 0 done (open/close) or present (check); 1 absent (check); 2 refused input; other
# codes come from nft.
#
# spad.toml:
#   [firewall.script]
#   open  = ["/etc/spad/script/nft-set.sh"]
#   close = ["/etc/spad/script/nft-set.sh"]
#   check = ["/etc/spad/script/nft-set.sh"]
#   reopen_on_extend = true    # a re-knock pushes the element's timeout out

set -eu

NFT=${NFT:-nft}
TABLE=${NFT_TABLE:-spa_script}

die() {
    echo "nft-set.sh: $*" >&2
    exit 2
}

# Every value that goes into an nft command is checked against a strict pattern first: nft
# parses its arguments as one command line, so nothing unchecked may reach it.
case "${SPA_ACTION:-}" in
    open | close | check) ;;
    *) die "SPA_ACTION must be open, close or check (got '${SPA_ACTION:-}')" ;;
esac
[ -z "${SPA_NAT:-}" ] || die "NAT grants are not supported by this example"
[ -z "${SPA_SOURCE_PORT:-}" ] || die "grants bound to a source port are not supported by this example"
[ -n "${SPA_PORT:-}" ] || die "forward-all and per = \"grant\" are not supported (needs a port)"
case "${SPA_PROTO:-}" in
    tcp | udp) ;;
    *) die "bad protocol '${SPA_PROTO:-}'" ;;
esac
case "$SPA_PORT" in
    *[!0-9]*) die "bad port '$SPA_PORT'" ;;
esac
case "${SPA_FAMILY:-}" in
    ipv4) SET=allow4 ;;
    ipv6) SET=allow6 ;;
    *) die "bad family '${SPA_FAMILY:-}'" ;;
esac
case "${SPA_SOURCE:-}" in
    '' | *[!0-9a-fA-F.:]*) die "bad address '${SPA_SOURCE:-}'" ;;
esac
case "$TABLE" in
    '' | *[!A-Za-z0-9_]*) die "bad NFT_TABLE '$TABLE'" ;;
esac
TIMEOUT=${SPA_TIMEOUT:-0}
case "$TIMEOUT" in
    '' | *[!0-9]*) die "bad timeout '$TIMEOUT'" ;;
esac
# An element needs a timeout of at least one second.
[ "$TIMEOUT" -ge 1 ] || TIMEOUT=1

ELEM="$SPA_SOURCE . $SPA_PROTO . $SPA_PORT"

present() {
    "$NFT" get element inet "$TABLE" "$SET" "{ $ELEM }" >/dev/null 2>&1
}

ensure_table() {
    if "$NFT" list table inet "$TABLE" >/dev/null 2>&1; then
        return 0
    fi
    "$NFT" -f - <<NFT
table inet $TABLE {
    set allow4 { type ipv4_addr . inet_proto . inet_service; flags timeout; }
    set allow6 { type ipv6_addr . inet_proto . inet_service; flags timeout; }
    set guarded { type inet_proto . inet_service; }
    chain input {
        type filter hook input priority filter - 1; policy accept;
        ct state established,related accept
        ip saddr . meta l4proto . th dport @allow4 accept
        ip6 saddr . meta l4proto . th dport @allow6 accept
        meta l4proto . th dport @guarded drop
    }
}
NFT
}

case "$SPA_ACTION" in
    open)
        ensure_table
        # add (no-op if present), delete, add with the new timeout: one transaction, so an
        # element being refreshed is never missing, and opening twice is harmless.
        "$NFT" -f - <<NFT
add element inet $TABLE $SET { $ELEM }
delete element inet $TABLE $SET { $ELEM }
add element inet $TABLE $SET { $ELEM timeout ${TIMEOUT}s }
NFT
        ;;
    close)
        # Already gone (expired, removed by hand, table missing) counts as closed.
        if present; then
            "$NFT" delete element inet "$TABLE" "$SET" "{ $ELEM }"
        fi
        ;;
    check)
        if present; then exit 0; else exit 1; fi
        ;;
esac
