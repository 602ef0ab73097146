#!/usr/bin/env bash
# nginx mail proxy (ngx_mail) as a reference STARTTLS-terminating SMTP proxy.
#   nginx-mail.sh start DIR PORT BACKEND_PORT CERT KEY     nginx-mail.sh stop DIR
# Listens on 127.0.0.1:PORT, 'starttls on', 'smtp_auth none', proxies to
# 127.0.0.1:BACKEND_PORT. Note: STARTTLS=only does NOT make nginx refuse
# plaintext MAIL (it only guards AUTH); with smtp_auth none mail still flows.
# The auth_http endpoint nginx needs is an http server in this nginx on DIR/auth.sock.
# Env: STARTTLS=on|only|off (default on), XCLIENT=on|off (default on: nginx sends
#   XCLIENT ADDR/NAME/HELO to a backend that offers it), WORKERS (default 1),
#   SERVER_NAME (greeting name, default mx.example.test), LOG_LEVEL (error_log
#   level, default error: nginx's own default; info logs every session),
#   WORKER_CONNECTIONS (default 8192: compare.sh holds 2,000 idle sessions).
# Copied from the team's peer scripts for benches/compare.sh (issue #11).
# Files: DIR/nginx.conf, DIR/nginx.pid, DIR/logs/{error,access}.log
set -euo pipefail
die() { echo "nginx-mail.sh: ERROR: $*" >&2; exit 1; }
usage() { die "usage: nginx-mail.sh start DIR PORT BACKEND_PORT CERT KEY | stop DIR"; }
[ $# -ge 2 ] || usage
cmd=$1 dir=$(realpath -m "$2")
command -v nginx >/dev/null || die "nginx not installed (run benches/install-bench-deps.sh)"
MOD=/usr/lib/nginx/modules/ngx_mail_module.so
[ -e $MOD ] || die "$MOD missing (apt-get install libnginx-mod-mail)"

stop() {
  local pid; pid=$(cat "$dir/nginx.pid" 2>/dev/null || true)
  if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then echo "nginx-mail.sh: not running ($dir)"; return 0; fi
  kill -QUIT "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || { echo "nginx-mail.sh: stopped pid $pid"; return 0; }; sleep 0.1; done
  kill -TERM "$pid"; die "nginx pid $pid did not exit on QUIT; sent TERM"
}

case $cmd in
stop) stop; exit 0 ;;
start) [ $# -eq 6 ] || usage ;;
*) usage ;;
esac
port=$3 bport=$4
cert=$(realpath "$5") key=$(realpath "$6")
[ -r "$cert" ] && [ -r "$key" ] || die "CERT/KEY not readable"
mkdir -p "$dir/logs" "$dir/tmp"
dir=$(cd "$dir" && pwd)
stop >/dev/null
sock=$dir/auth.sock
[ ${#sock} -lt 100 ] || die "path $sock too long for a unix socket; use a shorter DIR"
ss -Hltn "sport = :$port" | grep -q . && die "127.0.0.1:$port already in use"
cat > "$dir/nginx.conf" <<EOF
load_module $MOD;
worker_processes ${WORKERS:-1};
pid $dir/nginx.pid;
error_log $dir/logs/error.log ${LOG_LEVEL:-error};
events { worker_connections ${WORKER_CONNECTIONS:-8192}; }
http {
  access_log $dir/logs/access.log;
  client_body_temp_path $dir/tmp/body; proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi; uwsgi_temp_path $dir/tmp/uwsgi; scgi_temp_path $dir/tmp/scgi;
  server {
    listen unix:$sock;
    location = /auth {
      add_header Auth-Status OK;
      add_header Auth-Server 127.0.0.1;
      add_header Auth-Port $bport;
      return 204;
    }
  }
}
mail {
  server_name ${SERVER_NAME:-mx.example.test};
  auth_http unix:$sock:/auth;
  proxy_pass_error_message on;
  xclient ${XCLIENT:-on};
  smtp_capabilities "SIZE 104857600" 8BITMIME ENHANCEDSTATUSCODES;
  ssl_certificate $cert;
  ssl_certificate_key $key;
  ssl_protocols TLSv1.2 TLSv1.3;
  server {
    listen 127.0.0.1:$port;
    protocol smtp;
    smtp_auth none;
    starttls ${STARTTLS:-on};
  }
}
EOF
ngx=(nginx -e "$dir/logs/error.log" -p "$dir" -c "$dir/nginx.conf")
"${ngx[@]}" -t -q || die "nginx config test failed ($dir/nginx.conf)"
"${ngx[@]}" || die "nginx failed to start; see $dir/logs/error.log"
for _ in $(seq 50); do ss -Hltn "sport = :$port" | grep -q . && break; sleep 0.1; done
ss -Hltn "sport = :$port" | grep -q . || die "nginx not listening on $port; see $dir/logs/error.log"
echo "nginx-mail: 127.0.0.1:$port -> 127.0.0.1:$bport pid=$(cat "$dir/nginx.pid") starttls=${STARTTLS:-on} xclient=${XCLIENT:-on} log=$dir/logs/error.log"
