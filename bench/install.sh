#!/usr/bin/env bash
# Install benchmark (issue 4): a `files` update of FILES files (default 10,000) totalling
# about MB MiB (default 500) as tar.zst, installed by `upkeep install --no-download` (a whole
# process: session, metadata refresh, staging, journalled crash-safe apply, one syncfs,
# commit) against `tar --zstd -xf` into a fresh directory followed by `sync`, in the same
# rounds (alternating order, after a warm-up), on the root filesystem (ext4 here, where
# /tmp lives). Also times `upkeep uninstall` (which restores the tree) and the whole demo.
# Every extraction goes to a new directory; nothing is deleted between timed runs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
FILES=${FILES:-10000}
MB=${MB:-500}
command -v zstd >/dev/null || { apt-get update -qq && apt-get install -y -qq zstd >/dev/null; }
cargo build --release -q -p upkeep-cli
BIN=$PWD/target/release/upkeep
data=$(mktemp -d -p /dev/shm upkeep-ibench.XXXXXX)
disk=$(mktemp -d -p /tmp upkeep-ibench.XXXXXX)
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$data" "$disk"; }
trap cleanup EXIT
ID=88888888-8888-4888-8888-888888888888

echo "generating $FILES files, $MB MiB"
python3 - "$data/src" "$FILES" "$MB" <<'PY'
import os, sys
root, n, mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
size = mb * 1024 * 1024 // n
for i in range(n):
    p = os.path.join(root, "usr/share/app/d%03d" % (i % 100), "f%05d.bin" % i)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    # Half random, half text: compressible like real payloads.
    with open(p, "wb") as f:
        f.write(os.urandom(size // 2)); f.write((b"line %d\n" % i) * (size // 2 // 10))
PY
tar --zstd -cf "$data/app.tar.zst" -C "$data/src" .
rm -rf "$data/src"
"$BIN" repo init "$data/repo" >/dev/null
"$BIN" repo add "$data/repo" --id "$ID" --title "Big app" --payload "$data/app.tar.zst" --handler files >/dev/null
"$BIN" repo serve "$data/repo" --listen 127.0.0.1:0 2> "$data/serve.log" &
server_pid=$!
for _ in $(seq 1 100); do grep -q http:// "$data/serve.log" 2>/dev/null && break; sleep 0.05; done
url=$(grep -o 'http://[^ ]*' "$data/serve.log" | head -1)
agent() { "$BIN" --repo "$url" --trusted-root "$data/repo/metadata/1.root.json" --state-dir "$disk/state" --root "$disk/root-$1" "${@:2}"; }
agent 0 download "$ID" >/dev/null

# Each timed run starts with nothing dirty: `sync` first, untimed, so no run pays for the
# previous one's writes or deletions.
secs() { local t0 t1; sync; t0=$(date +%s%N); "$@" >/dev/null; t1=$(date +%s%N); awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", (b - a) / 1e9 }'; }
run_tar() { mkdir -p "$disk/tar-$1"; secs bash -c "tar --zstd -xf '$data/app.tar.zst' -C '$disk/tar-$1' && sync"; }
run_upkeep() { secs agent "$1" install "$ID" --no-download; }
run_uninstall() { secs agent "$1" uninstall "$ID"; }

echo "warm-up"; run_tar w >/dev/null; run_upkeep w >/dev/null; run_uninstall w >/dev/null
: > "$data/rows"
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then u=$(run_upkeep "$r"); t=$(run_tar "$r"); else t=$(run_tar "$r"); u=$(run_upkeep "$r"); fi
  un=$(run_uninstall "$r")
  echo "$u $t $un" >> "$data/rows"
  echo "round $r: upkeep install $u s | tar+sync $t s | upkeep uninstall $un s"
done
demo=$(secs "$BIN" demo)
python3 - "$data/rows" "$demo" "$FILES" "$MB" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
u, t, un = (statistics.median(r[i] for r in rows) for i in range(3))
print()
print(f"install benchmark: {sys.argv[3]} files, {sys.argv[4]} MiB tar.zst, medians of {len(rows)} rounds; ratio > 1 means upkeep is faster")
print("| work | upkeep | peer | ratio |")
print("|---|---|---|---|")
print(f"| install (crash-safe) vs `tar --zstd -xf` + `sync` | {u:.2f} s | {t:.2f} s | **{t/u:.2f}×** |")
print(f"| uninstall (restores the previous tree) | {un:.2f} s | – | – |")
print(f"| `upkeep demo` (publish, serve, search, download, install, uninstall, clean up) | {float(sys.argv[2]):.2f} s | – | – |")
PY
