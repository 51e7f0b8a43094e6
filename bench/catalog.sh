#!/usr/bin/env bash
# Catalog benchmark (issue 2): N updates in B hashed bins served by nginx on loopback.
#   - cold refresh + catalog load: `upkeep search` with an empty state directory, against
#     python-tuf's ngclient refreshing and loading every bin of the same metadata
#     (time, bytes on the wire, peak RSS), rounds alternating A B / B A after a warm-up;
#   - warm search `IsInstalled=0` on a session whose catalog is loaded (in process), and a
#     warm search from a new process (metadata trusted on disk, repository unchanged);
#   - requests and bytes for a refresh of an unchanged repository.
# BASELINE_DIR=DIR also times DIR/search-bench (an older build) against this one.
# Usage: bench/catalog.sh            (N=100000 BINS=1024 ROUNDS=3 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000}
BINS=${BINS:-1024}
ROUNDS=${ROUNDS:-3}
PY=${PYTHON:-/tmp/upkeep-ci-venv/bin/python}
if ! "$PY" -c 'import tuf' 2>/dev/null; then
  python3 -m venv /tmp/upkeep-ci-venv
  /tmp/upkeep-ci-venv/bin/pip install -q 'tuf==7.0.0' 'securesystemslib[crypto]==1.4.0'
  PY=/tmp/upkeep-ci-venv/bin/python
fi
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }
cargo build --release -q -p upkeep-cli -p upkeep-bench
BIN=$PWD/target/release

# Generated data lives on tmpfs (see docs: ext4 here slows down after mass deletes).
work=$(mktemp -d -p /dev/shm upkeep-bench.XXXXXX)
. scripts/loopback-nginx.sh
cleanup() { stop_nginx; rm -rf "$work"; }
trap cleanup EXIT

"$BIN/gen-catalog" "$work/repo" "$N" "$BINS"
start_nginx "$work" "$work/repo" "log_format bytes '\$body_bytes_sent'; access_log $work/access.log bytes;"
base="$NGINX_BASE/"
root="$work/repo/metadata/1.root.json"
one_id=$(head -1 "$work/repo/one-path-per-bin.txt" | cut -d/ -f2)

log_mark() { wc -l < "$work/access.log" 2>/dev/null || echo 0; }
log_since() { tail -n +"$(( $1 + 1 ))" "$work/access.log" | awk '{n++; b+=$1} END {printf "%d %d\n", n, b}'; }

run_upkeep_cold() { # ROUND [BINARY]
  local state="$work/state-u-$1${2:+-b}" m; m=$(log_mark)
  /usr/bin/time -f "%e %M" -o "$work/time" "${2:-$BIN/upkeep}" --repo "$base" --trusted-root "$root" \
    --state-dir "$state" search "UpdateID='$one_id'" --json > /dev/null
  echo "$(cat "$work/time") $(log_since "$m")"
}
run_python_cold() {
  local md="$work/state-p-$1" m; m=$(log_mark); mkdir -p "$md"
  /usr/bin/time -f "%e %M" -o "$work/time" "$PY" bench/ngclient_load_all.py "$base" "$root" \
    "$work/repo/one-path-per-bin.txt" "$md"
  echo "$(cat "$work/time") $(log_since "$m")"
}

# BASELINE_DIR also times that build's cold refresh in the same rounds.
OLD=${BASELINE_DIR:+$BASELINE_DIR/upkeep}
echo "warm-up"; run_upkeep_cold w >/dev/null; run_python_cold w >/dev/null
[ -n "$OLD" ] && run_upkeep_cold w "$OLD" >/dev/null
: > "$work/u.txt"; : > "$work/p.txt"; : > "$work/b.txt"
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then
    run_upkeep_cold "$r" >> "$work/u.txt"; run_python_cold "$r" >> "$work/p.txt"
    [ -n "$OLD" ] && run_upkeep_cold "$r" "$OLD" >> "$work/b.txt"
  else
    [ -n "$OLD" ] && run_upkeep_cold "$r" "$OLD" >> "$work/b.txt"
    run_python_cold "$r" >> "$work/p.txt"; run_upkeep_cold "$r" >> "$work/u.txt"
  fi
  echo "round $r: upkeep $(tail -1 "$work/u.txt") | python-tuf $(tail -1 "$work/p.txt") | baseline $(tail -1 "$work/b.txt" 2>/dev/null)  (s KiB requests bytes)"
done

# Warm: in process (catalog cached in the session) and from a new process.
warm=$("$BIN/search-bench" "$base" "$root" "$work/state-u-1" 20)
: > "$work/w.txt"
for _ in $(seq 1 5); do
  /usr/bin/time -f "%e %M" -o "$work/time" "$BIN/upkeep" --repo "$base" --state-dir "$work/state-u-1" \
    search "UpdateID='$one_id'" --json > /dev/null
  cat "$work/time" >> "$work/w.txt"
done
m=$(log_mark)
"$BIN/upkeep" --repo "$base" --state-dir "$work/state-u-1" search "UpdateID='$one_id'" --json > /dev/null
unchanged=$(log_since "$m")

# BASELINE_DIR=/path/to/an/older/target/release: the warm search of that build's
# search-bench against this one's, alternating, on the same catalog (a regression check).
if [ -n "${BASELINE_DIR:-}" ]; then
  med() { "$PY" -c 'import json,sys; print("%.1f" % json.loads(sys.argv[1])["warm_median_ms"])' "$1"; }
  for i in 1 2 3 4; do
    if [ $((i % 2)) = 1 ]; then
      a=$("$BIN/search-bench" "$base" "$root" "$work/state-u-1" 20); b=$("$BASELINE_DIR/search-bench" "$base" "$root" "$work/state-b" 20)
    else
      b=$("$BASELINE_DIR/search-bench" "$base" "$root" "$work/state-b" 20); a=$("$BIN/search-bench" "$base" "$root" "$work/state-u-1" 20)
    fi
    echo "warm search round $i: this build $(med "$a") ms, baseline $(med "$b") ms"
  done
fi

"$PY" - "$work/u.txt" "$work/p.txt" "$work/w.txt" "$warm" "$unchanged" "$N" "$BINS" "$work/b.txt" <<'PY'
import json, statistics, sys
u = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
p = [list(map(float, l.split())) for l in open(sys.argv[2]) if l.strip()]
w = [list(map(float, l.split())) for l in open(sys.argv[3]) if l.strip()]
warm = json.loads(sys.argv[4]); req, byt = map(int, sys.argv[5].split()); n, bins = sys.argv[6], sys.argv[7]
med = lambda rows, i: statistics.median(r[i] for r in rows)
ut, pt = med(u, 0), med(p, 0)
print()
print(f"catalog benchmark: {n} updates in {bins} bins, nginx on loopback, medians of {len(u)} rounds")
print(f"| measure | upkeep | python-tuf ngclient | ratio |")
print(f"|---|---|---|---|")
print(f"| cold refresh + load all bins (s) | {ut:.2f} | {pt:.2f} | {pt/ut:.1f}x faster |")
print(f"| bytes moved (cold) | {med(u,3)/1e6:.1f} MB in {med(u,2):.0f} requests | {med(p,3)/1e6:.1f} MB in {med(p,2):.0f} requests | {med(p,3)/med(u,3):.2f} |")
print(f"| peak RSS (cold) | {med(u,1)/1024:.0f} MiB | {med(p,1)/1024:.0f} MiB | {med(p,1)/med(u,1):.2f} |")
print(f"| warm search IsInstalled=0, catalog loaded (ms) | {warm['warm_median_ms']:.1f} ({warm['warm_found']} found) | - | - |")
print(f"| warm search from a new process (s) | {med(w,0):.2f} | - | - |")
print(f"| refresh of an unchanged repository | {req} request(s), {byt} bytes | - | - |")
b = [list(map(float, l.split())) for l in open(sys.argv[8]) if l.strip()]
if b:
    print(f"| cold refresh, baseline build (s) | {med(b, 0):.2f} ({med(b, 1)/1024:.0f} MiB) | this build {ut:.2f} | {med(b, 0)/ut:.2f}x |")
PY
