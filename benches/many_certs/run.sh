#!/usr/bin/env bash
# Issue #11's certificate-count targets: the handshake rate with 10,000
# certificates loaded against 2, and a bulk rotation of 5,000 of them.
# Needs a release build (cargo build --release), smtp-sink (Postfix) and
# python3-cryptography; run as root from anywhere. Loopback only.
#   benches/many_certs/run.sh            # N=10000 ROTATE=5000 ROUNDS=3
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); REPO=$(cd "$HERE/../.." && pwd)
B=$REPO/target/release
# Run as root like the other benchmarks; `run` refuses root without this.
export STARTTLS_PROXY_ALLOW_ROOT=true
N=${N:-10000}; ROTATE=${ROTATE:-5000}; ROUNDS=${ROUNDS:-3}
SINK_PORT=23325; PORT_N=23301; PORT_2=23302
W=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$W"' EXIT
die() { echo "many_certs: ERROR: $*" >&2; exit 1; }
[ -x "$B/starttls-proxy" ] && [ -x "$B/starttls-loadgen" ] || die "build first: cargo build --release"
command -v smtp-sink >/dev/null || die "smtp-sink missing (Debian package postfix)"
python3 "$HERE/gen.py" "$N" "$W/many" "$PORT_N" "$SINK_PORT"
python3 "$HERE/gen.py" 1 "$W/two" "$PORT_2" "$SINK_PORT"
taskset -c 0 smtp-sink -u nobody -m 5000 "127.0.0.1:$SINK_PORT" 1024 2>/dev/null & pids+=($!)
ready() { # log file
  local deadline=$((SECONDS + 120))
  until grep -q "starttls-proxy ready" "$1" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "proxy not ready: $(tail -3 "$1")"; sleep 0.1
  done
}
start=$(date +%s.%N)
taskset -c 1 "$B/starttls-proxy" run --config "$W/many/proxy.toml" --log-format json 2>"$W/many.log" & PM=$!; pids+=($PM)
ready "$W/many.log"
echo "$N certificates: ready in $(echo "$(date +%s.%N) - $start" | bc) s, $(grep VmRSS /proc/$PM/status | tr -s ' \t' ' ')"
taskset -c 1 "$B/starttls-proxy" run --config "$W/two/proxy.toml" --log-format json 2>"$W/two.log" & P2=$!; pids+=($P2)
ready "$W/two.log"
echo "2 certificates: $(grep VmRSS /proc/$P2/status | tr -s ' \t' ' ')"
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
run() { # label pid port sni
  local c0 j c1; c0=$(cpu "$2")
  j=$(taskset -c 0 "$B/starttls-loadgen" handshake --target "127.0.0.1:$3" --sni "$4" \
      --ca "$REPO/certs.example/ca.pem" --tls 1.3 --concurrency 64 --duration 4)
  c1=$(cpu "$2")
  python3 - "$j" "$c0" "$c1" "$1" <<'PY'
import json, sys
j = json.loads(sys.argv[1])
cpu_s = (int(sys.argv[3]) - int(sys.argv[2])) / 100
rate, errors, done = j["rate_per_s"], j["errors"], max(j["completed"], 1)
print(f"{sys.argv[4]:>6}: {rate:.0f} handshakes/s, errors {errors}, server CPU {cpu_s / done * 1e6:.0f} us/handshake")
PY
}
for r in $(seq "$ROUNDS"); do
  run 2 "$P2" "$PORT_2" mx.tenant0.test
  run "$N" "$PM" "$PORT_N" "mx.tenant$((N - 1)).test"
done
# Bulk rotation: the proxy polls every 2 s (events off: 10,000 watched
# directories would exceed the default inotify limits).
python3 "$HERE/rotate.py" "$W/many" "$ROTATE"
deadline=$((SECONDS + 300))
until [ "$(grep -c '"certificate reloaded"' "$W/many.log")" -ge "$ROTATE" ]; do
  [ $SECONDS -lt $deadline ] || die "only $(grep -c '"certificate reloaded"' "$W/many.log") of $ROTATE reloaded"; sleep 0.2
done
grep '"certificate reloaded"' "$W/many.log" | python3 -c 'import json,sys; ts=sorted(json.loads(l)["timestamp"] for l in sys.stdin); print(f"bulk rotation: {len(ts)} served without a restart; first reloaded {ts[0]}, last {ts[-1]}")'
echo "reload failures: $(grep -c "reload failed" "$W/many.log" || true)"
