#!/bin/sh
# Entry point of the compose stack's nginx: renders deploy/nginx/nginx.conf.template for the
# gateways in $GATEWAYS and runs nginx in the foreground (the template says `daemon off`), as
# PID 1 so `docker compose stop` reaches it.
#
#   GATEWAYS   space-separated HOST:PORT of every gateway, each its own `server` line
#              (compose: gateway1:3000 gateway2:3000 gateway3:3000)
#   LISTEN     listen address (default 0.0.0.0:8080)
#   PREFIX     writable directory for pid, logs and temp files (default /tmp/nginx)
#   TEMPLATE   the template (default /etc/gateway/nginx/nginx.conf.template)
#
# `nginx-entrypoint.sh render` only writes $PREFIX/nginx.conf (tests/deploy.rs checks that
# file with `nginx -t`).
set -eu
here=$(dirname "$0")
: "${GATEWAYS:?set GATEWAYS to the gateways, e.g. gateway1:3000 gateway2:3000}"
LISTEN=${LISTEN:-0.0.0.0:8080}
PREFIX=${PREFIX:-/tmp/nginx}
TEMPLATE=${TEMPLATE:-/etc/gateway/nginx/nginx.conf.template}
UPSTREAMS=""
for gateway in $GATEWAYS; do
    UPSTREAMS="${UPSTREAMS}server ${gateway} max_fails=3 fail_timeout=10s;
        "
done
export LISTEN PREFIX UPSTREAMS
mkdir -p "$PREFIX"
sh "$here/render-template.sh" "$TEMPLATE" "$PREFIX/nginx.conf" PREFIX LISTEN UPSTREAMS
if [ "${1:-}" = render ]; then
    exit 0
fi
# Logs to the container runtime (docker compose logs nginx), like the official image does.
ln -sf /dev/stderr "$PREFIX/error.log"
ln -sf /dev/stdout "$PREFIX/access.log"
exec nginx -c "$PREFIX/nginx.conf" -p "$PREFIX" -e /dev/stderr
