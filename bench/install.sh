#!/usr/bin/env bash
# Install and upgrade benchmark, on the mixed-size tree of ../shared/bench/mktree.py
# (10,000 files, ~500 MiB; SCALE=0.1 for a tenth), as tar.zst `files` updates:
#
#   fresh install: `upkeep install --no-download` (a whole process: session, metadata
#     refresh, staging, journalled crash-safe apply, one syncfs, commit) into an empty root,
#     against `tar --zstd -xf` into a fresh directory followed by `sync`;
#   upgrade: revision 1 installed (untimed), then revision 2 — 1 % of the files changed —
#     installed over it by `upkeep install`, against `tar --zstd -xf` of revision 2 over a
#     tree extracted from revision 1 (untimed), followed by `sync`.
#
# Rounds alternate the order after a warm-up round; every run writes into a directory of
# its own and nothing is deleted until the end (deleting a large tree slows file creation
# here for minutes: see bench-notes). Each timed run starts with `sync` (untimed). Every
# upkeep run gets a state directory of its own, cloned from a template (the content cache
# hard-linked). Prints medians and ratios (> 1: upkeep is faster).
#
# BASELINE=/path/to/an/older/upkeep also times that binary in the same rounds (its own
# template state), and prints this build against it: a regression check.
# DISK_DIR=/dev/shm installs into tmpfs instead of /tmp (ext4): the CPU side alone.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
SCALE=${SCALE:-1.0}
MKTREE=${MKTREE:-../shared/bench/mktree.py}
command -v zstd >/dev/null || { apt-get update -qq && apt-get install -y -qq zstd >/dev/null; }
cargo build --release -q -p upkeep-cli
BIN=$PWD/target/release/upkeep
data=$(mktemp -d -p /dev/shm upkeep-ibench.XXXXXX)
disk=$(mktemp -d -p "${DISK_DIR:-/tmp}" upkeep-ibench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$data" "$disk"; }
trap cleanup EXIT
ID=88888888-8888-4888-8888-888888888888

echo "generating the tree (mktree.py, scale $SCALE) and revision 2 (1 % of the files changed)"
python3 "$MKTREE" "$data/r1" "$SCALE" >/dev/null
cp -a "$data/r1" "$data/r2"
python3 - "$data/r2" <<'PY'
import os, sys
root = sys.argv[1]
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
for p in files[::100]:
    with open(p, "ab") as f:
        f.write(b"revision 2\n")
print(f"{len(files[::100])} of {len(files)} files changed")
PY
tar --zstd -cf "$data/r1.tar.zst" -C "$data/r1" .
tar --zstd -cf "$data/r2.tar.zst" -C "$data/r2" .
files=$(find "$data/r1" -type f | wc -l); mib=$(du -sm "$data/r1" | cut -f1)
rm -rf "$data/r1" "$data/r2"

# Repository A has revision 1; B is A plus revision 2 (same keys, later metadata). With a
# BASELINE, that binary publishes (an older agent refuses record fields it does not know).
PUB=${BASELINE:-$BIN}
"$PUB" repo init "$data/repoA" >/dev/null
"$PUB" repo add "$data/repoA" --id "$ID" --title "Big app" --payload "$data/r1.tar.zst" --handler files >/dev/null
cp -a "$data/repoA" "$data/repoB"
"$PUB" repo add "$data/repoB" --id "$ID" --revision 2 --title "Big app" --payload "$data/r2.tar.zst" --handler files >/dev/null
for r in repoA repoB; do
  "$BIN" repo serve "$data/$r" --listen 127.0.0.1:0 > /dev/null 2> "$data/$r.log" &
  pids+=($!)
  for _ in $(seq 1 100); do grep -q http:// "$data/$r.log" 2>/dev/null && break; sleep 0.05; done
done
urlA=$(grep -o 'http://[^ ]*' "$data/repoA.log" | head -1)
urlB=$(grep -o 'http://[^ ]*' "$data/repoB.log" | head -1)
BASE=${BASELINE:-}
agent() { local url=$1 state=$2 root=$3; shift 3
  local bin=$BIN; case $state in b-*) bin=$BASE;; esac
  "$bin" --repo "$url" --trusted-root "$data/repoA/metadata/1.root.json" --state-dir "$disk/$state" --root "$disk/$root" "$@"; }
# Template state: revision 1 downloaded with A's metadata; revision 2's content added to
# its cache from a second state that saw B.
agent "$urlA" tmpl root-tmpl download "$ID" >/dev/null
cp -a "$disk/tmpl" "$disk/tmplB"
agent "$urlB" tmplB root-tmpl download "$ID" >/dev/null
# Hard links keep the objects' stamps (`cache/verified/`) valid, as on a machine that
# downloaded them.
cp -nl "$disk/tmplB/cache/objects/"* "$disk/tmpl/cache/objects/"
if [ -d "$disk/tmplB/cache/verified" ]; then cp -an "$disk/tmplB/cache/verified/." "$disk/tmpl/cache/verified/"; fi
if [ -n "$BASE" ]; then
  agent "$urlA" b-tmpl root-tmpl download "$ID" >/dev/null
  cp -a "$disk/b-tmpl" "$disk/b-tmplB"
  agent "$urlB" b-tmplB root-tmpl download "$ID" >/dev/null
  cp -nl "$disk/b-tmplB/cache/objects/"* "$disk/b-tmpl/cache/objects/"
fi
# clone_state NAME: a state directory from the template of the binary NAME is for.
clone_state() { local t=tmpl; case $1 in b-*) t=b-tmpl;; esac
  mkdir -p "$disk/$1"; cp -al "$disk/$t/cache" "$disk/$1/"; cp -a "$disk/$t/metadata" "$disk/$t/state.db" "$disk/$1/"; }

secs() { local t0 t1; sync; t0=$(date +%s%N); "$@" >/dev/null; t1=$(date +%s%N); awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", (b - a) / 1e9 }'; }
fresh_tar() { mkdir -p "$disk/tar-f$1"; secs bash -c "tar --zstd -xf '$data/r1.tar.zst' -C '$disk/tar-f$1' && sync"; }
fresh_upkeep() { clone_state "st-f$1"; secs agent "$urlA" "st-f$1" "root-f$1" install "$ID" --no-download; }
upgrade_tar() { mkdir -p "$disk/tar-u$1"; tar --zstd -xf "$data/r1.tar.zst" -C "$disk/tar-u$1"
  secs bash -c "tar --zstd -xf '$data/r2.tar.zst' -C '$disk/tar-u$1' && sync"; }
upgrade_upkeep() { clone_state "st-u$1"; agent "$urlA" "st-u$1" "root-u$1" install "$ID" --no-download >/dev/null
  secs agent "$urlB" "st-u$1" "root-u$1" install "$ID" --no-download; }
fresh_base() { clone_state "b-st-f$1"; secs agent "$urlA" "b-st-f$1" "b-root-f$1" install "$ID" --no-download; }
upgrade_base() { clone_state "b-st-u$1"; agent "$urlA" "b-st-u$1" "b-root-u$1" install "$ID" --no-download >/dev/null
  secs agent "$urlB" "b-st-u$1" "b-root-u$1" install "$ID" --no-download; }

echo "warm-up"; fresh_tar w >/dev/null; fresh_upkeep w >/dev/null; upgrade_tar w >/dev/null; upgrade_upkeep w >/dev/null
# Check the work was done: revision 2 installed, byte-identical to tar's tree.
diff -r "$disk/root-uw" "$disk/tar-uw" >/dev/null || { echo "upkeep's upgraded tree differs from tar's"; exit 1; }
: > "$data/rows"
# Each round runs upkeep, the baseline (when given) and tar back to back for the same work,
# in alternating order: upkeep first in odd rounds, last in even ones, so that neither
# build always follows the same neighbour on the disk.
fb=0; gb=0
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then
    fu=$(fresh_upkeep "$r"); [ -n "$BASE" ] && fb=$(fresh_base "$r"); ft=$(fresh_tar "$r")
    gu=$(upgrade_upkeep "$r"); [ -n "$BASE" ] && gb=$(upgrade_base "$r"); gt=$(upgrade_tar "$r")
  else
    ft=$(fresh_tar "$r"); [ -n "$BASE" ] && fb=$(fresh_base "$r"); fu=$(fresh_upkeep "$r")
    gt=$(upgrade_tar "$r"); [ -n "$BASE" ] && gb=$(upgrade_base "$r"); gu=$(upgrade_upkeep "$r")
  fi
  echo "$fu $ft $gu $gt $fb $gb" >> "$data/rows"
  echo "round $r: install upkeep $fu s, tar+sync $ft s | upgrade upkeep $gu s, tar+sync $gt s${BASE:+ | baseline install $fb s, upgrade $gb s}"
done
python3 - "$data/rows" "$files" "$mib" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
fu, ft, gu, gt, fb, gb = (statistics.median(r[i] for r in rows) for i in range(6))
print()
print(f"install benchmark: mktree.py tree, {sys.argv[2]} files, {sys.argv[3]} MiB, tar.zst; medians of {len(rows)} rounds; ratio > 1 means upkeep is faster")
print("| work | upkeep | peer | ratio |")
print("|---|---|---|---|")
print(f"| fresh install (crash-safe) vs `tar --zstd -xf` + `sync` | {fu:.2f} s | {ft:.2f} s | **{ft/fu:.2f}×** |")
print(f"| upgrade, 1 % changed (crash-safe) vs `tar --zstd -xf` over the old tree + `sync` | {gu:.2f} s | {gt:.2f} s | **{gt/gu:.2f}×** |")
if fb > 0:
    print(f"| fresh install vs the baseline binary | {fu:.2f} s | {fb:.2f} s | **{fb/fu:.2f}×** |")
    print(f"| upgrade vs the baseline binary | {gu:.2f} s | {gb:.2f} s | **{gb/gu:.2f}×** |")
PY
