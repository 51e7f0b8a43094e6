#!/usr/bin/env bash
# Download benchmark (issue 3): upkeep against curl, both fetching from nginx on loopback
# in the same run, rounds alternating A B / B A after a warm-up, medians and ratios.
#   (a) one 1 GiB update            upkeep download   vs  curl -o (which verifies nothing)
#   (b) 2,000 updates of 64 KiB     upkeep download   vs  curl --parallel --parallel-max 8
#   (c) 200 updates of 5 MiB        upkeep download   vs  curl --parallel --parallel-max 8
#   (d) peak RSS during (a)
#   (e) bytes moved when (a) is SIGKILLed at 50 % and run again, over the file's size
#   (f) abort latency: request_abort during (a) until the completion callback (in process)
# upkeep's times are whole `upkeep download --all` processes: start, TUF refresh, search,
# transfer, verification, cache commit. Data and downloads live on /dev/shm.
# BASELINE=/path/to/an/older/upkeep also times that binary in the same rounds (a regression
# check: its median and this build's ratio to it are reported).
# Usage: bench/download.sh     (ROUNDS=3 BIG_MB=1024 SMALL_N=2000 MID_N=200 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
BIG_MB=${BIG_MB:-1024}
SMALL_N=${SMALL_N:-2000}
MID_N=${MID_N:-200}
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }
cargo build --release -q -p upkeep-cli -p upkeep-bench
BIN=$PWD/target/release

work=$(mktemp -d -p /dev/shm upkeep-dl.XXXXXX)
. scripts/loopback-nginx.sh
cleanup() { stop_nginx; rm -rf "$work"; }
trap cleanup EXIT

echo "generating repositories in $work"
"$BIN/gen-content" "$work/srv/big" 1 $((BIG_MB << 20))
"$BIN/gen-content" "$work/srv/small" "$SMALL_N" 65536
"$BIN/gen-content" "$work/srv/mid" "$MID_N" $((5 << 20))
start_nginx "$work" "$work/srv" "log_format bytes '\$uri \$body_bytes_sent'; access_log $work/access.log bytes;"

n=0
fresh() { n=$((n + 1)); echo "$work/run-$n"; }
timed() { /usr/bin/time -f "%e %M" -o "$work/time" "$@"; cat "$work/time"; }

BASE=${BASELINE:-}
run_upkeep() { # REPO [BINARY] -> "seconds KiB"
  local state; state=$(fresh)
  /usr/bin/time -f "%e %M" -o "$work/time" "${2:-$BIN/upkeep}" --repo "$NGINX_BASE/$1/" \
    --trusted-root "$work/srv/$1/metadata/1.root.json" --state-dir "$state" download --all --json \
    > "$work/out.json"
  grep -q '"result_code": *"Succeeded"' "$work/out.json" || { echo "upkeep download failed" >&2; cat "$work/out.json" >&2; exit 1; }
  cat "$work/time"
  rm -rf "$state"
}
run_curl() { # REPO -> "seconds KiB"; one file: curl -o; many: curl --parallel
  local out cfg; out=$(fresh); mkdir -p "$out"; cfg="$out.curl"
  if [ "$(wc -l < "$work/srv/$1/urls.txt")" = 1 ]; then
    timed curl -sf -o "$out/f" "$NGINX_BASE/$1/$(cat "$work/srv/$1/urls.txt")"
  else
    awk -v b="$NGINX_BASE/$1/" -v o="$out" '{printf "url = \"%s%s\"\noutput = \"%s/%d\"\n", b, $0, o, NR}' \
      "$work/srv/$1/urls.txt" > "$cfg"
    timed curl -sf --no-progress-meter --parallel --parallel-max 8 -K "$cfg"
  fi
  rm -rf "$out" "$cfg"
}

: > "$work/results.txt"
for repo in big small mid; do
  echo "$repo: warm-up"; run_upkeep "$repo" > /dev/null; run_curl "$repo" > /dev/null
  [ -n "$BASE" ] && run_upkeep "$repo" "$BASE" > /dev/null
  for r in $(seq 1 "$ROUNDS"); do
    b="- -"
    if [ $((r % 2)) = 1 ]; then
      u=$(run_upkeep "$repo"); c=$(run_curl "$repo"); [ -n "$BASE" ] && b=$(run_upkeep "$repo" "$BASE")
    else
      [ -n "$BASE" ] && b=$(run_upkeep "$repo" "$BASE"); c=$(run_curl "$repo"); u=$(run_upkeep "$repo")
    fi
    echo "$repo $u $c $b" >> "$work/results.txt"
    echo "$repo round $r: upkeep $u | curl $c | baseline $b  (s KiB)"
  done
done

# (e) SIGKILL at 50 %, then run again; count the payload's bytes in nginx's log.
payload=$(cat "$work/srv/big/urls.txt")
size=$((BIG_MB << 20))
mark=$(wc -l < "$work/access.log")
state=$(fresh)
"$BIN/upkeep" --repo "$NGINX_BASE/big/" --trusted-root "$work/srv/big/metadata/1.root.json" \
  --state-dir "$state" download --all --json > /dev/null 2>&1 &
pid=$!
for _ in $(seq 1 6000); do
  part=$(find "$state/cache/partial" -name '*.part' -size +$((size / 2 / 1024))k 2>/dev/null | head -1 || true)
  [ -n "$part" ] && break
  sleep 0.01
done
[ -n "$part" ] || { echo "(e): the download never reached 50 %" >&2; kill -9 "$pid"; exit 1; }
kill -9 "$pid"; wait "$pid" 2>/dev/null || true
killed_at=$(stat -c %s "$state"/cache/partial/*.part)
"$BIN/upkeep" --repo "$NGINX_BASE/big/" --state-dir "$state" download --all --json > "$work/out.json"
grep -q '"result_code": *"Succeeded"' "$work/out.json"
# Let nginx flush its log line for the last request.
for _ in $(seq 1 100); do
  [ "$(tail -n +"$((mark + 1))" "$work/access.log" | grep -c "/big/$payload")" -ge 2 ] && break
  sleep 0.05
done
moved=$(tail -n +"$((mark + 1))" "$work/access.log" | awk -v u="/big/$payload" '$1 == u {b += $2} END {print b + 0}')
rm -rf "$state"

# (f) abort latency, in process.
abort=$("$BIN/abort-bench" "$NGINX_BASE/big/" "$work/srv/big/metadata/1.root.json" "$work/abort" 5)
rm -rf "$work"/abort-*

python3 - "$work/results.txt" "$moved" "$size" "$killed_at" "$abort" "$BIG_MB" "$SMALL_N" "$MID_N" <<'PY'
import json, statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
moved, size, killed_at = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
abort = json.loads(sys.argv[5]); big, small, mid = sys.argv[6:9]
def med(repo, i): return statistics.median(float(r[i]) for r in rows if r[0] == repo)
print()
print(f"download benchmark: nginx on loopback, medians of {sum(r[0] == 'big' for r in rows)} rounds; ratio > 1 means upkeep is faster")
print("| work | upkeep | curl | ratio |")
print("|---|---|---|---|")
for repo, label, peer, n, each in [("big", f"(a) 1 update of {big} MiB", "curl -o", 1, int(big) << 20),
                                    ("small", f"(b) {small} updates of 64 KiB", "curl --parallel 8", int(small), 65536),
                                    ("mid", f"(c) {mid} updates of 5 MiB", "curl --parallel 8", int(mid), 5 << 20)]:
    u, c = med(repo, 1), med(repo, 3)
    mb = n * each / 1e6
    extra = f"{mb/u:.0f} MB/s" if n == 1 else f"{n/u:.0f} files/s, {mb/u:.0f} MB/s"
    extra_c = f"{mb/c:.0f} MB/s" if n == 1 else f"{n/c:.0f} files/s, {mb/c:.0f} MB/s"
    print(f"| {label} | {u:.2f} s ({extra}) | {c:.2f} s ({extra_c}, {peer}) | **{c/u:.2f}×** |")
if rows[0][5] != "-":
    print()
    print("| work | this build | baseline | ratio (> 1: this build faster) |")
    print("|---|---|---|---|")
    for repo in ["big", "small", "mid"]:
        u, b = med(repo, 1), med(repo, 5)
        print(f"| {repo} | {u:.2f} s, {med(repo, 2)/1024:.1f} MiB | {b:.2f} s, {med(repo, 6)/1024:.1f} MiB | {b/u:.2f}× |")
    print()
print(f"| (d) peak RSS during (a) | {med('big', 2)/1024:.1f} MiB | {med('big', 4)/1024:.1f} MiB | target ≤ 64 MiB |")
print(f"| (e) bytes moved, killed at {killed_at/size:.0%} and run again | {moved/size:.3f} × the file | – | target ≤ 1.05 |")
print(f"| (f) abort latency (request_abort → completion callback) | median {abort['median_ms']:.1f} ms, max {abort['max_ms']:.1f} ms of {abort['rounds']} | – | target ≤ 200 ms |")
PY
