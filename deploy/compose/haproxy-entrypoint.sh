#!/bin/sh
# Entry point of the compose stack's optional HAProxy (`docker compose --profile haproxy up`):
# renders deploy/haproxy/haproxy.cfg.template for the gateways in $GATEWAYS and runs HAProxy
# in the foreground (-db) as PID 1, logging to stdout.
#
#   GATEWAYS   space-separated HOST:PORT of every gateway; the N-th gets cookie gwN
#   LISTEN     bind address (default :8081)
#   PREFIX     writable directory for the pid file and runtime API socket (default /tmp/haproxy)
#   TEMPLATE   the template (default /etc/gateway/haproxy/haproxy.cfg.template)
#
# `haproxy-entrypoint.sh render` only writes $PREFIX/haproxy.cfg (tests/deploy.rs checks that
# file with `haproxy -c`).
set -eu
here=$(dirname "$0")
: "${GATEWAYS:?set GATEWAYS to the gateways, e.g. gateway1:3000 gateway2:3000}"
LISTEN=${LISTEN:-:8081}
PREFIX=${PREFIX:-/tmp/haproxy}
TEMPLATE=${TEMPLATE:-/etc/gateway/haproxy/haproxy.cfg.template}
SERVERS=""
n=0
for gateway in $GATEWAYS; do
    n=$((n + 1))
    SERVERS="${SERVERS}server gw${n} ${gateway} check cookie gw${n}
    "
done
export LISTEN PREFIX SERVERS
mkdir -p "$PREFIX"
sh "$here/render-template.sh" "$TEMPLATE" "$PREFIX/haproxy.cfg" PREFIX LISTEN SERVERS
if [ "${1:-}" = render ]; then
    exit 0
fi
exec haproxy -db -f "$PREFIX/haproxy.cfg"
