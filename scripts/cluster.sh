#!/bin/sh
# make cluster / make cluster-down: Redis, three embedserve replicas sharing it, and HAProxy
# (deploy/haproxy/haproxy.cfg) in front, all on loopback, for a person to try.
#   scripts/cluster.sh up BINARY CONFIG | scripts/cluster.sh down
# Ports: HAProxy 8090 (stats 8091), replicas 8081-8083 (metrics 9465-9467), Redis 6390.
set -eu
DIR=target/cluster
action=$1

down() {
    for pidfile in "$DIR"/*.pid; do
        [ -e "$pidfile" ] || continue
        kill "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    done
}

if [ "$action" = down ]; then
    down
    echo "cluster stopped"
    exit 0
fi

BIN=$2
CONFIG=$3
down
mkdir -p "$DIR"
redis-server --port 6390 --bind 127.0.0.1 --save "" --appendonly yes --dir "$DIR" \
    --daemonize no >"$DIR/redis.log" 2>&1 &
echo $! >"$DIR/redis.pid"

# The default configuration with limits and usage in that Redis.
sed "s|\"\.\./assets/|\"$(pwd)/assets/|" "$CONFIG" >"$DIR/config.toml"
printf '\n[store]\nbackend = "redis"\nredis_url = "redis://127.0.0.1:6390/0"\n' >>"$DIR/config.toml"
for i in 1 2 3; do
    EMBEDSERVE__SERVER__RELOAD_POLL_MS=0 "$BIN" serve --config "$DIR/config.toml" \
        --bind "127.0.0.1:808$i" --metrics-bind "127.0.0.1:946$((4 + i))" >"$DIR/replica$i.log" 2>&1 &
    echo $! >"$DIR/replica$i.pid"
done

HAPROXY_BIND=127.0.0.1:8090 HAPROXY_STATS_BIND=127.0.0.1:8091 HAPROXY_STATS_SOCKET="$(pwd)/$DIR/haproxy.sock" \
    EMBEDSERVE_1=127.0.0.1:8081 EMBEDSERVE_2=127.0.0.1:8082 EMBEDSERVE_3=127.0.0.1:8083 \
    haproxy -db -f deploy/haproxy/haproxy.cfg >"$DIR/haproxy.log" 2>&1 &
echo $! >"$DIR/haproxy.pid"

# Ready when HAProxy answers /ready through a healthy replica.
tries=0
until curl -fsS http://127.0.0.1:8090/ready >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -gt 120 ]; then
        echo "the cluster did not become ready; logs in $DIR" >&2
        down
        exit 1
    fi
    sleep 0.5
done
cat <<MSG
cluster up: http://127.0.0.1:8090 (HAProxy; stats at http://127.0.0.1:8091/stats)
  replicas 127.0.0.1:8081-8083, Redis 127.0.0.1:6390, logs in $DIR/
  curl -s http://127.0.0.1:8090/v1/embed -H 'Authorization: Bearer acme-dev-key' \\
       -H 'Content-Type: application/json' -d '{"input": "hello"}' -D - -o /dev/null | grep -i 'served-by\|ratelimit'
  curl -s http://127.0.0.1:8090/v1/usage -H 'Authorization: Bearer acme-dev-key'
  make cluster-down stops it.
MSG
