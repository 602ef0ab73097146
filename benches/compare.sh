#!/usr/bin/env bash
# compare.sh — starttls-proxy side by side with nginx's mail proxy, stunnel
# and Postfix smtpd, on loopback, for issue #11. Run as root from anywhere:
#
#   benches/install-bench-deps.sh      # once: nginx + mail module, stunnel4, perf…
#   benches/compare.sh                 # ~10 min with the defaults
#
# Every server gets the same certificates (certs.example/mx1.example.test:
# ECDSA P-256 and RSA-2048 leaves under one intermediate) and the same
# backend, Postfix's smtp-sink (Postfix smtpd instead discards itself: it is
# an MTA, not a proxy). Each server is pinned to core SERVER_CPU; the load
# generator (target/release/starttls-loadgen) and smtp-sink to LOAD_CPU.
# Targets are alternated A B C D, A B C D… for R rounds; the table shows
# medians over the rounds and, per round, paired ratios proxy/other, whose
# median is shown.
#
# Figures (see docs/benchmarks.md for what each means):
#   handshakes/s            ECDSA and RSA × TLS 1.3 and 1.2, HS_CONCURRENCY clients
#                           (many: nginx and Postfix stall 40 ms per TLS 1.3 session
#                           on Nagle + delayed ACK after their session tickets, stunnel
#                           200 ms before its greeting; enough clients keep the
#                           server's core busy anyway; the busy % rows show it)
#   CPU per handshake       server CPU time (utime+stime of its process tree,
#                           /proc/PID/stat) over the run ÷ handshakes completed
#   delivered sessions      STARTTLS, one 4 KiB message, QUIT (ECDSA, TLS 1.3 and 1.2):
#                           sessions/s and server CPU per session; every server
#                           reaches the backend in these (nginx does not in a
#                           handshake-only session); plus smtp-sink's CPU per
#                           plaintext session reached directly
#   messages/s, CPU per MiB 8 sessions × 1 MiB messages, 64 sessions × 4 KiB
#   RSS per idle session    (VmRSS held − VmRSS before) ÷ IDLE_SESSIONS, after
#                           STARTTLS and EHLO; and VmRSS after they close
#   p99 added, 4 KiB        p99 of the 64 × 4 KiB transactions minus the p99 of
#                           the same load sent to smtp-sink directly (plaintext);
#                           once flat out, once at PACED_RATE messages/s
#   crypto ceiling          openssl speed on SERVER_CPU: P-256 and RSA-2048
#                           sign/s, X25519 op/s
#
# Env: R (rounds, 3), TARGETS ("proxy nginx stunnel postfix"), HS_DURATION (s, 3),
#   HS_CONCURRENCY (128), MSG_DURATION (s, 4), PACED_RATE (/s, 500), IDLE_SESSIONS (2000),
#   IDLE_HOLD (s, 2), SERVER_CPU (1), LOAD_CPU (0), BASE_PORT (23000),
#   PROXY_LOG_LEVEL (info), OUT (benches/results), KEEP=1 keeps the work dir.
# Output: the markdown table on stdout and in OUT/compare-<date>.md, every
# run's raw JSON and the medians in OUT/compare-<date>.json.
# Exit 0 when every run completed (errors are counted and shown, marked *);
# 1 with "compare.sh: ERROR: ..." when a peer is missing or a server fails.
set -euo pipefail

ME=compare.sh
die() { echo "$ME: ERROR: $*" >&2; exit 1; }
log() { echo "$ME: $*" >&2; }

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"

R=${R:-3}
TARGETS=${TARGETS:-"proxy nginx stunnel postfix"}
HS_DURATION=${HS_DURATION:-3}
HS_CONCURRENCY=${HS_CONCURRENCY:-128}
MSG_DURATION=${MSG_DURATION:-4}
# The fixed offered load of the paced 4 KiB run (messages/s over 64
# sessions): below every server's saturation, so p99 is latency, not queueing.
PACED_RATE=${PACED_RATE:-500}
IDLE_SESSIONS=${IDLE_SESSIONS:-2000}
IDLE_HOLD=${IDLE_HOLD:-2}
SERVER_CPU=${SERVER_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
BASE_PORT=${BASE_PORT:-23000}
PROXY_LOG_LEVEL=${PROXY_LOG_LEVEL:-info}
OUT=${OUT:-$REPO/benches/results}

[[ $R =~ ^[0-9]+$ ]] && [ "$R" -ge 1 ] && [ "$R" -le 20 ] || die "R must be 1..20"
for t in $TARGETS; do
  case $t in proxy|nginx|stunnel|postfix) ;; *) die "unknown target '$t' (proxy nginx stunnel postfix)" ;; esac
done

# --- prerequisites: fail loudly, never skip a peer ---------------------------
[ "$(id -u)" = 0 ] || die "run as root (private Postfix, nginx)"
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: run benches/install-bench-deps.sh"; }
need taskset; need openssl; need python3; need ss; need smtp-sink; need cargo
for t in $TARGETS; do
  case $t in
    nginx) need nginx; [ -e /usr/lib/nginx/modules/ngx_mail_module.so ] \
             || die "nginx mail module missing: run benches/install-bench-deps.sh" ;;
    stunnel) need stunnel4 ;;
    postfix) need postfix ;;
  esac
done
ncpu=$(nproc --all)
[ "$SERVER_CPU" -lt "$ncpu" ] && [ "$LOAD_CPU" -lt "$ncpu" ] || die "SERVER_CPU/LOAD_CPU must be < $ncpu"
[ "$SERVER_CPU" != "$LOAD_CPU" ] || log "WARNING: server and load generator share core $SERVER_CPU"
need_fds=$((IDLE_SESSIONS * 3 + 1000))
if [ "$(ulimit -n)" -lt "$need_fds" ]; then
  ulimit -n "$need_fds" 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
  [ "$(ulimit -n)" -ge "$need_fds" ] || die "open-file limit $(ulimit -n) < $need_fds for $IDLE_SESSIONS sessions"
fi

log "building release binaries"
cargo build --release --locked --bin starttls-proxy --bin starttls-loadgen >&2 \
  || die "cargo build failed"
PROXY_BIN=$REPO/target/release/starttls-proxy
# Benchmarks run as root (taskset, ulimit); `run` refuses root without this.
export STARTTLS_PROXY_ALLOW_ROOT=true
LOADGEN=$REPO/target/release/starttls-loadgen

CERTS=$REPO/certs.example
CA=$CERTS/ca.pem
SNI=mx1.example.test
declare -A CHAIN=([ecdsa]=$CERTS/mx1.example.test/ecdsa/fullchain.pem [rsa]=$CERTS/mx1.example.test/fullchain.pem)
declare -A KEY=([ecdsa]=$CERTS/mx1.example.test/ecdsa/privkey.pem [rsa]=$CERTS/mx1.example.test/privkey.pem)
chmod 600 "${KEY[ecdsa]}" "${KEY[rsa]}"   # the proxy warns about group-readable keys

SINK_PORT=$((BASE_PORT + 25))
declare -A PORT=([proxy]=$((BASE_PORT + 1)) [nginx]=$((BASE_PORT + 2)) [stunnel]=$((BASE_PORT + 3)) [postfix]=$((BASE_PORT + 4)))
for p in "$SINK_PORT" "${PORT[@]}"; do
  ! ss -Hltn "sport = :$p" | grep -q . || die "127.0.0.1:$p already in use (set BASE_PORT)"
done

# Short: nginx's auth socket and Postfix's sockets live under it.
WORK=$(mktemp -d /tmp/stpb.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/runs"
SINK_PID="" SERVER_PID="" SERVER_KIND=""

stop_server() {
  case $SERVER_KIND in
    proxy) if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi ;;
    nginx) benches/peers/nginx-mail.sh stop "$WORK/nginx" >/dev/null 2>&1 || true ;;
    stunnel) benches/peers/stunnel.sh stop "$WORK/stunnel" >/dev/null 2>&1 || true ;;
    postfix) tests/peers/postfix-backend.sh stop "$WORK/pf" >/dev/null 2>&1 || true ;;
  esac
  SERVER_PID="" SERVER_KIND=""
}
cleanup() {
  local rc=$?
  stop_server
  if [ -n "$SINK_PID" ]; then kill "$SINK_PID" 2>/dev/null || true; wait "$SINK_PID" 2>/dev/null || true; fi
  if [ "${KEEP:-0}" = 1 ] || [ "$rc" != 0 ]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_port PORT WHAT: up to 10 s for a listener.
wait_port() {
  local i
  for i in $(seq 100); do
    ss -Hltn "sport = :$1" | grep -q . && return 0
    sleep 0.1
  done
  die "$2 not listening on 127.0.0.1:$1 after 10 s"
}

# Process-tree figures: CPU seconds (self + reaped children) and VmRSS KiB.
tree_stat() { # tree_stat PID cpu|rss
  python3 - "$1" "$2" <<'PY'
import os, sys
root, what = int(sys.argv[1]), sys.argv[2]
tck = os.sysconf("SC_CLK_TCK")
kids, stat = {}, {}
for d in os.listdir("/proc"):
    if not d.isdigit():
        continue
    try:
        with open(f"/proc/{d}/stat") as f:
            s = f.read()
    except OSError:
        continue
    f = s[s.rindex(")") + 2:].split()
    pid = int(d); stat[pid] = f
    kids.setdefault(int(f[1]), []).append(pid)
todo, tree = [root], []
while todo:
    p = todo.pop()
    if p in stat:
        tree.append(p); todo.extend(kids.get(p, []))
if not tree:
    sys.exit(f"compare.sh: no process {root}")
if what == "cpu":
    # fields after ')': state=0 ppid=1 … utime=11 stime=12 cutime=13 cstime=14
    print(sum(int(stat[p][11]) + int(stat[p][12]) + int(stat[p][13]) + int(stat[p][14]) for p in tree) / tck)
else:
    rss = 0
    for p in tree:
        try:
            with open(f"/proc/{p}/status") as f:
                for l in f:
                    if l.startswith("VmRSS:"):
                        rss += int(l.split()[1])
        except OSError:
            pass
    print(rss)
PY
}

# --- backend -----------------------------------------------------------------
# -c: counters only; no dump files; -m: many parallel sessions (stunnel and
# the proxy hold a backend connection per idle session); -u nobody: smtp-sink
# drops root after binding. Pinned with the load generator.
taskset -c "$LOAD_CPU" smtp-sink -u nobody -m $((IDLE_SESSIONS + 1000)) \
  "127.0.0.1:$SINK_PORT" 4096 >"$WORK/smtp-sink.log" 2>&1 &
SINK_PID=$!
wait_port "$SINK_PORT" smtp-sink

# --- servers -------------------------------------------------------------------
start_server() { # start_server KIND KEYTYPE → SERVER_PID (root of its process tree)
  local kind=$1 kt=$2 port=${PORT[$1]}
  SERVER_KIND=$kind
  case $kind in
    proxy)
      mkdir -p "$WORK/proxy"
      cat >"$WORK/proxy/proxy.toml" <<EOF
hostname = "mx1.example.test"

[[listener]]
address = "127.0.0.1:$port"
tls = "opportunistic"
backend = "sink"

[tls]
default_certificate = "mx1"
trust_anchors = "$CA"

[[certificate]]
name = "mx1"
chain = "${CHAIN[$kt]}"
key = "${KEY[$kt]}"

[[backend]]
name = "sink"
servers = ["127.0.0.1:$SINK_PORT"]

[limits]
max_connections = $((IDLE_SESSIONS + 1000))
max_connections_per_ip = $((IDLE_SESSIONS + 1000))

[log]
format = "text"
level = "$PROXY_LOG_LEVEL"
EOF
      taskset -c "$SERVER_CPU" "$PROXY_BIN" run --config "$WORK/proxy/proxy.toml" \
        >>"$WORK/proxy/proxy.log" 2>&1 &
      SERVER_PID=$!
      wait_port "$port" starttls-proxy
      ;;
    nginx)
      XCLIENT=off SERVER_NAME=mx1.example.test taskset -c "$SERVER_CPU" \
        benches/peers/nginx-mail.sh start "$WORK/nginx" "$port" "$SINK_PORT" "${CHAIN[$kt]}" "${KEY[$kt]}" >&2 \
        || die "nginx failed to start"
      SERVER_PID=$(cat "$WORK/nginx/nginx.pid")
      ;;
    stunnel)
      taskset -c "$SERVER_CPU" \
        benches/peers/stunnel.sh start "$WORK/stunnel" "$port" "$SINK_PORT" "${CHAIN[$kt]}" "${KEY[$kt]}" >&2 \
        || die "stunnel failed to start"
      SERVER_PID=$(tr -d ' ' <"$WORK/stunnel/stunnel.pid")
      ;;
    postfix)
      TLS_CERT=${CHAIN[$kt]} TLS_KEY=${KEY[$kt]} DISCARD=1 PROCS=200 taskset -c "$SERVER_CPU" \
        tests/peers/postfix-backend.sh start "$WORK/pf" "$port" >&2 \
        || die "postfix failed to start"
      SERVER_PID=$(tr -d ' \n' <"$WORK/pf/spool/pid/master.pid")
      ;;
  esac
  [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null || die "$kind: no server process"
  # Warm-up: page in code, fill allocator pools, start Postfix's smtpd processes.
  loadgen handshake --target "127.0.0.1:$port" --concurrency "$HS_CONCURRENCY" --count 300 \
    >/dev/null || die "$kind: warm-up failed"
}

# loadgen ARGS…: the generator on LOAD_CPU with the common TLS arguments.
loadgen() {
  local mode=$1; shift
  taskset -c "$LOAD_CPU" "$LOADGEN" "$mode" --sni "$SNI" --ca "$CA" "$@"
}

# measure NAME ARGS…: one loadgen run against the current server; stores
# the generator's JSON plus server_cpu_s in runs/NAME.json.
measure() {
  local name=$1; shift
  local c0 c1
  c0=$(tree_stat "$SERVER_PID" cpu)
  loadgen "$@" >"$WORK/runs/$name.json" 2>"$WORK/runs/$name.err" \
    || die "$name: load generator failed: $(tail -3 "$WORK/runs/$name.err")"
  c1=$(tree_stat "$SERVER_PID" cpu)
  python3 - "$WORK/runs/$name.json" "$c0" "$c1" <<'PY'
import json, sys
p = sys.argv[1]
r = json.load(open(p))
r["server_cpu_s"] = float(sys.argv[3]) - float(sys.argv[2])
json.dump(r, open(p, "w"))
PY
  local errs; errs=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["errors"])' "$WORK/runs/$name.json")
  [ "$errs" = 0 ] || log "WARNING: $name: $errs errors ($(cat "$WORK/runs/$name.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["errors_by_kind"])'))"
}

# idle NAME: hold IDLE_SESSIONS sessions, sample the tree's VmRSS around it.
measure_idle() {
  local name=$1 port=$2 before held after ready=$WORK/runs/$1.ready lg i
  before=$(tree_stat "$SERVER_PID" rss)
  rm -f "$ready"
  loadgen idle --target "127.0.0.1:$port" --sessions "$IDLE_SESSIONS" --concurrency 64 \
    --hold "$IDLE_HOLD" --ready-file "$ready" >"$WORK/runs/$name.json" 2>"$WORK/runs/$name.err" &
  lg=$!
  for i in $(seq 600); do [ -e "$ready" ] && break; kill -0 "$lg" 2>/dev/null || break; sleep 0.1; done
  [ -e "$ready" ] || { kill "$lg" 2>/dev/null || true; die "$name: sessions not established within 60 s"; }
  sleep 0.3
  held=$(tree_stat "$SERVER_PID" rss)
  wait "$lg" || die "$name: load generator failed: $(tail -3 "$WORK/runs/$name.err")"
  sleep 1
  after=$(tree_stat "$SERVER_PID" rss)
  python3 - "$WORK/runs/$name.json" "$before" "$held" "$after" <<'PY'
import json, sys
p = sys.argv[1]
r = json.load(open(p))
r["rss_before_kib"], r["rss_held_kib"], r["rss_after_kib"] = map(int, sys.argv[2:5])
json.dump(r, open(p, "w"))
PY
}

# --- rounds --------------------------------------------------------------------
started=$(date +%s)
for round in $(seq "$R"); do
  for t in $TARGETS; do
    port=${PORT[$t]}
    log "round $round/$R: $t (ECDSA)"
    start_server "$t" ecdsa
    for v in 1.3 1.2; do
      measure "$t.r$round.hs_ecdsa_$v" handshake --target "127.0.0.1:$port" --tls "$v" \
        --sigalgs ecdsa --concurrency "$HS_CONCURRENCY" --duration "$HS_DURATION"
    done
    # Delivered sessions: STARTTLS, one 4 KiB message, QUIT. Every server
    # reaches the backend here (nginx only at MAIL, the proxy after the
    # handshake), so this is the handshake cost a real delivery pays.
    for v in 1.3 1.2; do
      measure "$t.r$round.session_ecdsa_$v" message --target "127.0.0.1:$port" --tls "$v" \
        --sigalgs ecdsa --concurrency "$HS_CONCURRENCY" --size 4096 --messages 1 --duration "$HS_DURATION"
    done
    measure "$t.r$round.msg_1m" message --target "127.0.0.1:$port" --concurrency 8 \
      --size 1048576 --messages 20 --duration "$MSG_DURATION"
    measure "$t.r$round.msg_4k" message --target "127.0.0.1:$port" --concurrency 64 \
      --size 4096 --messages 100 --duration "$MSG_DURATION"
    measure "$t.r$round.msg_4k_paced" message --target "127.0.0.1:$port" --concurrency 64 \
      --size 4096 --messages 100 --duration "$MSG_DURATION" --rate "$PACED_RATE"
    # Postfix forks an smtpd per session: 2,000 idle sessions are 2,000 processes.
    [ "$t" = postfix ] || measure_idle "$t.r$round.idle" "$port"
    stop_server
    log "round $round/$R: $t (RSA)"
    start_server "$t" rsa
    for v in 1.3 1.2; do
      measure "$t.r$round.hs_rsa_$v" handshake --target "127.0.0.1:$port" --tls "$v" \
        --sigalgs rsa --concurrency "$HS_CONCURRENCY" --duration "$HS_DURATION"
    done
    stop_server
  done
  log "round $round/$R: smtp-sink directly (plaintext)"
  SERVER_PID=$SINK_PID
  # The same delivered session in plaintext: smtp-sink's own CPU per session
  # is what serving one SMTP connection costs on this kernel, TLS aside.
  measure "direct.r$round.session" message --target "127.0.0.1:$SINK_PORT" --plain \
    --concurrency "$HS_CONCURRENCY" --size 4096 --messages 1 --duration "$HS_DURATION"
  measure "direct.r$round.msg_4k" message --target "127.0.0.1:$SINK_PORT" --plain \
    --concurrency 64 --size 4096 --messages 100 --duration "$MSG_DURATION"
  measure "direct.r$round.msg_4k_paced" message --target "127.0.0.1:$SINK_PORT" --plain \
    --concurrency 64 --size 4096 --messages 100 --duration "$MSG_DURATION" --rate "$PACED_RATE"
  SERVER_PID=""
done

log "crypto ceiling: openssl speed on core $SERVER_CPU"
taskset -c "$SERVER_CPU" openssl speed -seconds 3 ecdsap256 rsa2048 ecdhx25519 \
  >"$WORK/openssl-speed.txt" 2>/dev/null || die "openssl speed failed"

# --- report --------------------------------------------------------------------
mkdir -p "$OUT"
stamp=$(date -u +%Y%m%d-%H%M)
machine=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
versions=$(printf 'starttls-proxy %s (%s); nginx %s; %s; Postfix %s; %s; %s' \
  "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')" \
  "$(git -C "$REPO" status --porcelain --untracked-files=no | grep -q . && echo dirty || echo clean)" \
  "$(dpkg-query -W -f='${Version}' nginx 2>/dev/null || echo '?')" \
  "$(stunnel4 -version 2>&1 | awk '/^stunnel/{print $1" "$2; exit}')" \
  "$(postconf -d -h mail_version 2>/dev/null)" \
  "$(openssl version | cut -d' ' -f1-2)" \
  "$(rustc --version | cut -d' ' -f1-2)")
python3 - "$WORK" "$OUT/compare-$stamp" "$TARGETS" "$R" "$machine" "$versions" \
  "$HS_CONCURRENCY" "$HS_DURATION" "$MSG_DURATION" "$IDLE_SESSIONS" "$SERVER_CPU" "$LOAD_CPU" \
  "$(( $(date +%s) - started ))" "$PACED_RATE" <<'PY'
import glob, json, os, re, statistics, sys, datetime
work, out, targets, R, machine, versions = sys.argv[1], sys.argv[2], sys.argv[3].split(), int(sys.argv[4]), sys.argv[5], sys.argv[6]
hs_conc, hs_dur, msg_dur, idle_n, scpu, lcpu, took = sys.argv[7:14]
idle_n = int(idle_n)
paced_rate = float(sys.argv[14])
runs = {}
for p in glob.glob(f"{work}/runs/*.json"):
    runs[os.path.basename(p)[:-5]] = json.load(open(p))

def get(t, r, kind):
    return runs.get(f"{t}.r{r}.{kind}")

MiB = 1024 * 1024
# figure: (label, unit, fn(target, round) -> value or None, higher_is_better)
def rate(kind):
    return lambda t, r: (x := get(t, r, kind)) and x["rate_per_s"]
def cpu_hs(kind):
    return lambda t, r: (x := get(t, r, kind)) and x["completed"] and x["server_cpu_s"] / x["completed"] * 1e6
def cpu_mib(kind):
    return lambda t, r: (x := get(t, r, kind)) and x["bytes"] and x["server_cpu_s"] / (x["bytes"] / MiB) * 1e3
def idle_per(t, r):
    x = get(t, r, "idle")
    return x and x["completed"] and (x["rss_held_kib"] - x["rss_before_kib"]) / x["parameters"]["established"]
def idle_after(t, r):
    x = get(t, r, "idle")
    return x and x["rss_after_kib"] / 1024
def idle_before(t, r):
    x = get(t, r, "idle")
    return x and x["rss_before_kib"] / 1024
def p99_added_at(kind):
    def f(t, r):
        x, d = get(t, r, kind), runs.get(f"direct.r{r}.{kind}")
        return x and d and x["latency_ms"]["p99"] is not None and x["latency_ms"]["p99"] - d["latency_ms"]["p99"]
    return f
p99_added = p99_added_at("msg_4k")
figures = []
for k, kt in (("ecdsa", "ECDSA"), ("rsa", "RSA")):
    for v in ("1.3", "1.2"):
        figures.append((f"hs_{k}_{v}", f"handshakes/s {kt} TLS {v}", "/s", rate(f"hs_{k}_{v}"), True))
for k, kt in (("ecdsa", "ECDSA"), ("rsa", "RSA")):
    for v in ("1.3", "1.2"):
        figures.append((f"cpu_hs_{k}_{v}", f"server CPU per handshake {kt} TLS {v}", "µs", cpu_hs(f"hs_{k}_{v}"), False))
for v in ("1.3", "1.2"):
    figures.append((f"session_ecdsa_{v}", f"delivered sessions/s (STARTTLS, one 4 KiB message) ECDSA TLS {v}", "/s", rate(f"session_ecdsa_{v}"), True))
for v in ("1.3", "1.2"):
    figures.append((f"cpu_session_ecdsa_{v}", f"server CPU per delivered session ECDSA TLS {v}", "µs", cpu_hs(f"session_ecdsa_{v}"), False))
def busy(kind):
    return lambda t, r: (x := get(t, r, kind)) and x["server_cpu_s"] / x["elapsed_s"] * 100
for k, kt in (("ecdsa", "ECDSA"), ("rsa", "RSA")):
    for v in ("1.3", "1.2"):
        figures.append((f"busy_hs_{k}_{v}", f"server core busy, handshakes {kt} TLS {v}", "%", busy(f"hs_{k}_{v}"), False))
figures += [
    ("msg_1m", "messages/s, 8 sessions × 1 MiB", "/s", rate("msg_1m"), True),
    ("cpu_mib_1m", "server CPU per MiB, 8 × 1 MiB", "ms", cpu_mib("msg_1m"), False),
    ("msg_4k", "messages/s, 64 sessions × 4 KiB", "/s", rate("msg_4k"), True),
    ("cpu_mib_4k", "server CPU per MiB, 64 × 4 KiB", "ms", cpu_mib("msg_4k"), False),
    ("busy_msg_1m", "server core busy, 8 × 1 MiB", "%", busy("msg_1m"), False),
    ("busy_msg_4k", "server core busy, 64 × 4 KiB", "%", busy("msg_4k"), False),
    ("p99_4k", "p99 per 4 KiB transaction (64 sessions)", "ms", lambda t, r: (x := get(t, r, "msg_4k")) and x["latency_ms"]["p99"], False),
    ("p99_added_4k", "p99 added over smtp-sink direct, 4 KiB", "ms", p99_added, False),
    ("p99_4k_paced", f"p99 per 4 KiB transaction at {paced_rate:g}/s (64 sessions)", "ms", lambda t, r: (x := get(t, r, "msg_4k_paced")) and x["latency_ms"]["p99"], False),
    ("p99_added_4k_paced", f"p99 added over smtp-sink direct, 4 KiB at {paced_rate:g}/s", "ms", p99_added_at("msg_4k_paced"), False),
    ("idle_rss_per_session", f"RSS per idle TLS session ({idle_n} held)", "KiB", idle_per, False),
    ("idle_rss_before", "RSS before the idle sessions", "MiB", idle_before, False),
    ("idle_rss_after", "RSS after they closed", "MiB", idle_after, False),
]

def errs(t, r):
    return sum(x["errors"] for k, x in runs.items() if k.startswith(f"{t}.r{r}."))

result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "machine": machine, "versions": versions, "rounds": R, "targets": targets,
          "parameters": {"hs_concurrency": int(hs_conc), "hs_duration_s": float(hs_dur),
                         "msg_duration_s": float(msg_dur), "idle_sessions": idle_n,
                         "server_cpu": int(scpu), "load_cpu": int(lcpu)},
          "took_s": int(took), "figures": {}, "runs": runs}
def fmt(v, unit):
    if v is None:
        return "n/a"
    if unit in ("/s",) and abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"
others = [t for t in targets if t != "proxy"]
rows = []
for key, label, unit, fn, higher in figures:
    per = {}
    for t in targets:
        vals = [fn(t, r) for r in range(1, R + 1)]
        vals = [v for v in vals if v not in (None, False) or v == 0]
        vals = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
        per[t] = {"values": vals, "median": statistics.median(vals) if vals else None}
    ratios = {}
    if "proxy" in targets:
        for o in others:
            rs = []
            for r in range(1, R + 1):
                a, b = fn("proxy", r), fn(o, r)
                if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b not in (0, False) and a is not False:
                    rs.append(a / b)
            ratios[o] = {"values": rs, "median": statistics.median(rs) if rs else None}
    result["figures"][key] = {"label": label, "unit": unit, "higher_is_better": higher,
                              "targets": per, "ratio_proxy_over": ratios}
    cells = [fmt(per[t]["median"], unit) for t in targets]
    rcells = [("n/a" if ratios[o]["median"] is None else f"{ratios[o]['median']:.2f}") for o in others] if "proxy" in targets else []
    rows.append(f"| {label} ({unit}) | " + " | ".join(cells + rcells) + " |")

# Crypto ceiling.
speed = open(f"{work}/openssl-speed.txt").read()
def grab(pat, idx):
    m = [l for l in speed.splitlines() if re.search(pat, l)]
    return float(m[-1].split()[idx]) if m else None
crypto = {"rsa2048_sign_per_s": grab(r"^rsa 2048 bits", -2),
          "p256_sign_per_s": grab(r"ecdsa \(nistp256\)", -2),
          "x25519_per_s": grab(r"ecdh \(X25519\)", -1)}
if crypto["p256_sign_per_s"] and crypto["x25519_per_s"]:
    crypto["ecdsa_tls13_floor_us"] = 1e6 / crypto["p256_sign_per_s"] + 1e6 / crypto["x25519_per_s"]
if crypto["rsa2048_sign_per_s"] and crypto["x25519_per_s"]:
    crypto["rsa_tls13_floor_us"] = 1e6 / crypto["rsa2048_sign_per_s"] + 1e6 / crypto["x25519_per_s"]
result["crypto_ceiling"] = crypto

# smtp-sink's CPU per plaintext delivered session (it runs on the generator's
# core; CPU time compares anyway): the TCP and SMTP cost of one connection.
sink_session = [x["server_cpu_s"] / x["completed"] * 1e6 for r in range(1, R + 1)
                if (x := runs.get(f"direct.r{r}.session")) and x["completed"]]
result["sink_cpu_per_plain_session_us"] = statistics.median(sink_session) if sink_session else None
errors = {t: [errs(t, r) for r in range(1, R + 1)] for t in targets}
result["errors_per_round"] = errors
hdr = ["figure"] + targets + [f"proxy/{o}" for o in others if "proxy" in targets]
md = []
md.append(f"# compare.sh, {result['date']}")
md.append("")
md.append(f"- machine: {machine}, {os.cpu_count()} CPUs; server on core {scpu}, load generator and smtp-sink on core {lcpu}")
md.append(f"- {versions}")
md.append(f"- {R} rounds, targets alternated ({' '.join(targets)}); medians; ratios are medians of per-round proxy/other")
md.append(f"- handshakes: {hs_conc} clients × {hs_dur} s; messages: {msg_dur} s per figure; idle: {idle_n} sessions; took {took} s")
md.append("")
md.append("| " + " | ".join(hdr) + " |")
md.append("|" + "---|" * len(hdr))
md += rows
md.append("")
md.append("Crypto ceiling (openssl speed -seconds 3, core %s): P-256 sign %s/s, RSA-2048 sign %s/s, X25519 %s/s; "
          "so one ECDSA TLS 1.3 handshake needs at least %s µs of server crypto, an RSA one %s µs." % (
          scpu, fmt(crypto["p256_sign_per_s"], "/s"), fmt(crypto["rsa2048_sign_per_s"], "/s"),
          fmt(crypto["x25519_per_s"], "/s"), fmt(crypto.get("ecdsa_tls13_floor_us"), "µs"),
          fmt(crypto.get("rsa_tls13_floor_us"), "µs")))
md.append("")
md.append("smtp-sink's own CPU per plaintext delivered session (connect, EHLO, one 4 KiB message, QUIT; "
          "reached directly): %s µs." % fmt(result["sink_cpu_per_plain_session_us"], "µs"))
md.append("")
md.append("Errors per round: " + "; ".join(f"{t} {e}" for t, e in errors.items()) +
          ("" if not any(sum(e) for e in errors.values()) else "  (**runs with errors: see the JSON**)"))
text = "\n".join(md) + "\n"
json.dump(result, open(out + ".json", "w"), indent=1)
open(out + ".md", "w").write(text)
print(text)
print(f"written: {out}.md {out}.json", file=sys.stderr)
PY
