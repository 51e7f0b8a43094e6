#!/usr/bin/env bash
# Crash harness: TRIALS (default 200) operations on a 2,000-file `files` update by real
# `upkeep` processes, each killed with SIGKILL — at a random instant (three trials in four)
# or at a named checkpoint with UPKEEP_CRASH_AT (the rest). After each kill the next
# session's recovery runs (`upkeep status`), and the install root must be byte-identical to
# the tree before the operation or after it, with the state database agreeing.
#   MODE=install (default): installs and uninstalls alternate (`search IsInstalled=1`).
#   MODE=upgrade: revision 1 installed, revision 2 (1 % of the files changed, some removed,
#   some added) installed over it; the root must be revision 1 or revision 2 exactly, and
#   `upkeep list` must name that revision.
# Prints the outcomes; exits 1 on any inconsistency. Data lives on /dev/shm; the repository
# server is stopped by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
TRIALS=${TRIALS:-200}
MODE=${MODE:-install}
FILES=${FILES:-2000}
cargo build --release -q -p upkeep-cli
BIN=$PWD/target/release/upkeep
work=$(mktemp -d -p /dev/shm upkeep-crash.XXXXXX)
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
ID=77777777-7777-4777-8777-777777777777

# The update: FILES files, two of them replacing files of the "before" tree.
python3 - "$work/src" "$FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    p = os.path.join(root, "opt/app/d%02d" % (i % 50), "f%05d" % i)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    open(p, "w").write("file %d\n" % i * 20)
os.makedirs(os.path.join(root, "etc"), exist_ok=True)
open(os.path.join(root, "etc/app.conf"), "w").write("new\n")
PY
tar -cf "$work/app.tar" -C "$work/src" .
# Revision 2: 1 % of the files changed, 10 removed, 10 added.
python3 - "$work/src" "$FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(0, n, 100):
    p = os.path.join(root, "opt/app/d%02d" % (i % 50), "f%05d" % i)
    open(p, "w").write("revision 2 of file %d\n" % i)
for i in range(1, 11):
    os.remove(os.path.join(root, "opt/app/d%02d" % (i % 50), "f%05d" % i))
    os.makedirs(os.path.join(root, "opt/app/new"), exist_ok=True)
    open(os.path.join(root, "opt/app/new", "n%02d" % i), "w").write("new %d\n" % i)
PY
tar -cf "$work/app2.tar" -C "$work/src" .
"$BIN" repo init "$work/repo" >/dev/null
"$BIN" repo add "$work/repo" --id "$ID" --title "App" --payload "$work/app.tar" --handler files >/dev/null
"$BIN" repo serve "$work/repo" --listen 127.0.0.1:0 2> "$work/serve.log" &
server_pid=$!
for _ in $(seq 1 100); do grep -q http:// "$work/serve.log" 2>/dev/null && break; sleep 0.05; done
url=$(grep -o 'http://[^ ]*' "$work/serve.log" | head -1)

agent() { local m=$1; shift; "$BIN" --repo "$url" --trusted-root "$work/repo/metadata/1.root.json" \
  --state-dir "$work/$m/state" --root "$work/$m/root" "$@"; }
# The same, as the process itself (`exec`): started with `&`, its PID is upkeep's, so the
# SIGKILL reaches the agent and not a subshell that would leave it running on.
agent_exec() { local m=$1; shift; exec "$BIN" --repo "$url" --trusted-root "$work/repo/metadata/1.root.json" \
  --state-dir "$work/$m/state" --root "$work/$m/root" "$@"; }
digest() { python3 - "$1" <<'PY'
import hashlib, os, stat, sys
root = sys.argv[1]; h = hashlib.sha256()
for d, dirs, files in sorted(os.walk(root)):
    dirs.sort()
    for name in sorted(dirs + files):
        p = os.path.join(d, name); st = os.lstat(p); rel = os.path.relpath(p, root)
        h.update(f"{rel} {stat.S_IFMT(st.st_mode)} {stat.S_IMODE(st.st_mode):o}\n".encode())
        if stat.S_ISLNK(st.st_mode): h.update(os.readlink(p).encode())
        elif stat.S_ISREG(st.st_mode): h.update(open(p, "rb").read())
print(h.hexdigest())
PY
}
installed() { local out; out=$(agent "$1" search IsInstalled=1 --json --offline); case "$out" in *"\"$ID\""*) echo yes ;; *) echo no ;; esac; }
revision() { agent "$1" list --json | python3 -c 'import json,sys; l=[u["revision"] for u in json.load(sys.stdin)["installed"]]; print(l[0] if l else 0)'; }

mkdir -p "$work/template/root/etc"; echo old > "$work/template/root/etc/app.conf"
agent template download "$ID" >/dev/null
before=$(digest "$work/template/root")
cp -a "$work/template" "$work/installed"
t0=$(date +%s%N); agent installed install "$ID" >/dev/null; t1=$(date +%s%N)
after=$(digest "$work/installed/root")
install_ms=$(( (t1 - t0) / 1000000 ))
echo "reference install: ${install_ms} ms; trials: $TRIALS"
if [ "$MODE" = upgrade ]; then
  "$BIN" repo add "$work/repo" --id "$ID" --revision 2 --title "App r2" --payload "$work/app2.tar" --handler files >/dev/null
  rm -rf "$work/template"; mv "$work/installed" "$work/template"
  before=$after
  agent template download "$ID" >/dev/null
  cp -a "$work/template" "$work/upgraded"
  t0=$(date +%s%N); agent upgraded install "$ID" >/dev/null; t1=$(date +%s%N)
  after=$(digest "$work/upgraded/root")
  install_ms=$(( (t1 - t0) / 1000000 ))
  [ "$(revision upgraded)" = 2 ] || { echo "reference upgrade did not install revision 2"; exit 1; }
  echo "reference upgrade: ${install_ms} ms"
fi

points_i=(install:journaled install:change install:applied install:synced install:committed install:staged)
points_u=(uninstall:journaled uninstall:change uninstall:applied uninstall:synced uninstall:committed)
points_g=(upgrade:staged upgrade:journaled upgrade:change upgrade:applied upgrade:synced upgrade:committed)
declare -A outcome=()
bad=0
for t in $(seq 1 "$TRIALS"); do
  m="t$t"
  if [ "$MODE" = upgrade ]; then op=upgrade; from=template
  elif [ $((t % 2)) = 1 ]; then op=install; from=template; else op=uninstall; from=installed; fi
  verb=$op; [ $op = upgrade ] && verb=install
  cp -a "$work/$from" "$work/$m"
  if [ $(( (t / 2) % 4 )) = 0 ]; then
    case $op in install) arr=("${points_i[@]}") ;; uninstall) arr=("${points_u[@]}") ;; *) arr=("${points_g[@]}") ;; esac
    p=${arr[$((RANDOM % ${#arr[@]}))]}
    changes=$FILES; [ $op = upgrade ] && changes=40
    [ "${p#*:}" = change ] && p="$p#$((RANDOM % changes + 1))"
    how="checkpoint $p"
    UPKEEP_CRASH_AT=$p agent "$m" "$verb" "$ID" >/dev/null 2>&1 || true
  else
    delay_us=$(( (RANDOM * 32768 + RANDOM) % ((install_ms * 1300) + 1000) ))
    how="kill at ${delay_us} us"
    agent_exec "$m" "$verb" "$ID" >/dev/null 2>&1 &
    pid=$!
    sleep "$(printf '%d.%06d' $((delay_us / 1000000)) $((delay_us % 1000000)))"
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    # Nothing of this trial may still run: the check below must see the root at rest.
    if pgrep -f -- "--state-dir $work/$m/state" >/dev/null; then
      echo "trial $t: an agent process outlived its SIGKILL" >&2; exit 1
    fi
  fi
  agent "$m" status >/dev/null 2>&1 || true   # recovery
  d=$(digest "$work/$m/root")
  if [ $op = upgrade ]; then
    case $(revision "$m") in 1) inst=no ;; 2) inst=yes ;; *) inst=none ;; esac
  else inst=$(installed "$m"); fi
  if [ "$d" = "$before" ] && [ "$inst" = no ]; then r=before
  elif [ "$d" = "$after" ] && [ "$inst" = yes ]; then r=after
  else r=INCONSISTENT; bad=$((bad + 1)); echo "trial $t ($op, $how): root $([ "$d" = "$before" ] && echo before || ([ "$d" = "$after" ] && echo after || echo other)), installed=$inst"; fi
  outcome["$op $r"]=$(( ${outcome["$op $r"]:-0} + 1 ))
  rm -rf "$work/$m"
done
echo
echo "| operation | ended as before | ended as after | inconsistent |"
echo "|---|---|---|---|"
for op in install uninstall upgrade; do
  [ "$MODE" = upgrade ] && [ $op != upgrade ] && continue
  [ "$MODE" != upgrade ] && [ $op = upgrade ] && continue
  echo "| $op | ${outcome["$op before"]:-0} | ${outcome["$op after"]:-0} | ${outcome["$op INCONSISTENT"]:-0} |"
done
echo "inconsistent outcomes: $bad of $TRIALS"
[ "$bad" = 0 ]
