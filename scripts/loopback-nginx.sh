# Sourced by interop/run.sh and bench/*.sh: start nginx on a free 127.0.0.1 port as our own
# process, serving a directory (never its keys/), and stop it by PID.
#   start_nginx WORKDIR ROOT [extra http-block lines]  -> sets NGINX_PID, NGINX_PORT, NGINX_BASE
#   stop_nginx
start_nginx() {
  local work=$1 root=$2 extra=${3:-"access_log off;"} py=${PYTHON:-python3} user_line=""
  NGINX_PORT=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "$work/nginx/logs"
  [ "$(id -u)" = 0 ] && user_line="user root;"
  cat > "$work/nginx/nginx.conf" <<CONF
$user_line
worker_processes 2;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log;
events { worker_connections 256; }
http {
  $extra
  sendfile on; tcp_nopush on; keepalive_requests 100000;
  default_type application/octet-stream;
  server { listen 127.0.0.1:$NGINX_PORT; root $root; location ~ /keys/ { return 404; } }
}
CONF
  nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" &
  NGINX_PID=$!
  for _ in $(seq 1 100); do
    "$py" -c "import socket; socket.create_connection(('127.0.0.1', $NGINX_PORT), 0.2)" 2>/dev/null && break
    sleep 0.05
  done
  NGINX_BASE="http://127.0.0.1:$NGINX_PORT"
}

stop_nginx() {
  if [ -n "${NGINX_PID:-}" ]; then
    kill "$NGINX_PID" 2>/dev/null || true
    wait "$NGINX_PID" 2>/dev/null || true
    NGINX_PID=""
  fi
}
