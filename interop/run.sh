#!/usr/bin/env bash
# Interop between upkeep and python-tuf 7.x, both ways, over nginx on loopback.
#   1. upkeep publishes (flat and 16 hashed bins); python-tuf's ngclient refreshes and
#      downloads every target.
#   2. python-tuf's Metadata API publishes by docs/repository-format.md; upkeep searches it.
# Needs: nginx, a python with tuf==7.x ($PYTHON), an upkeep binary ($UPKEEP).
set -euo pipefail
cd "$(dirname "$0")/.."
UPKEEP=${UPKEEP:-$PWD/target/release/upkeep}
PY=${PYTHON:-python3}
work=$(mktemp -d /tmp/upkeep-interop.XXXXXX)
. scripts/loopback-nginx.sh
cleanup() { stop_nginx; rm -rf "$work"; }
trap cleanup EXIT

mkdir -p "$work/www"
start_nginx "$work" "$work/www"
base=$NGINX_BASE

echo "== interop 1: upkeep publishes, python-tuf ngclient consumes"
src="$work/src"; mkdir -p "$src"
mkdir -p "$src/tree/opt/tools"; head -c 200000 /dev/urandom > "$src/tree/opt/tools/blob"
tar -cf "$src/tools.tar" -C "$src/tree" opt
printf '#!/bin/sh\nexit 3010\n' > "$src/setup.sh"
printf 'licence\n' > "$src/EULA.txt"
for layout in flat bins; do
  repo="$work/www/$layout"
  if [ "$layout" = bins ]; then "$UPKEEP" repo init "$repo" --bins 16 >/dev/null; else "$UPKEEP" repo init "$repo" >/dev/null; fi
  "$UPKEEP" repo add "$repo" --id 11111111-1111-4111-8111-111111111111 --title "Tools" \
    --payload "$src/tools.tar" --handler files --eula "$src/EULA.txt" >/dev/null
  "$UPKEEP" repo add "$repo" --id 22222222-2222-4222-8222-222222222222 --title "Agent" \
    --payload "$src/setup.sh" --handler command --arg install --uninstall-arg remove --reboot always >/dev/null
  "$UPKEEP" repo publish "$repo" >/dev/null
  cat > "$work/expected-$layout.json" <<JSON
{
  "updates/11111111-1111-4111-8111-111111111111/1/tools.tar": "$src/tools.tar",
  "updates/11111111-1111-4111-8111-111111111111/1/eula/EULA.txt": "$src/EULA.txt",
  "updates/22222222-2222-4222-8222-222222222222/1/setup.sh": "$src/setup.sh"
}
JSON
  "$PY" interop/python_client.py "$base/$layout/" "$repo/metadata/1.root.json" "$work/expected-$layout.json"
  # Every role's key replaced in turn (the root twice): python-tuf, still trusting root
  # version 1, follows them all.
  roles="timestamp snapshot targets root root"
  if [ "$layout" = bins ]; then roles="$roles bins"; fi
  for role in $roles; do "$UPKEEP" repo rotate-key "$repo" "$role" >/dev/null; done
  "$PY" interop/python_client.py "$base/$layout/" "$repo/metadata/1.root.json" "$work/expected-$layout.json"
  echo "python-tuf followed the rotation of every $layout role ($roles)"
done

echo "== interop 2: python-tuf publishes, upkeep searches"
"$PY" interop/python_publisher.py "$work/www/py"
out=$("$UPKEEP" --repo "$base/py/" --trusted-root "$work/www/py/metadata/1.root.json" \
  --state-dir "$work/state-py" search "DeploymentAction='Installation'" --json)
echo "$out" | "$PY" -c '
import json, sys
got = json.load(sys.stdin)
want = json.load(open(sys.argv[1]))
assert got["result_code"] == "Succeeded", got
ids = sorted(u["id"] for u in got["updates"])
titles = sorted(u["title"] for u in got["updates"])
assert ids == want["ids"], (ids, want)
assert titles == want["titles"], titles
a = next(u for u in got["updates"] if u["title"] == "Published by python-tuf")
assert a["severity"] == "Critical" and a["has_eula"] and a["kb_article_ids"] == ["4242"], a
assert a["installation_behavior"]["reboot_behavior"] == "CanRequestReboot", a
assert a["description"] == "Published by python-tuf.\n\n  - with a list of lines", a["description"]
assert a["release_notes"] == "Fixed:\n- the interop", a["release_notes"]
b = next(u for u in got["updates"] if u["title"] == "Delegated driver")
assert b["type"] == "Driver" and b["handler"]["kind"] == "command", b
print("upkeep found both python-tuf-published updates with every field")
' "$work/www/py/expected.json"

drv=$("$UPKEEP" --repo "$base/py/" --state-dir "$work/state-py" search "Type='Driver'" --json)
echo "$drv" | "$PY" -c 'import json,sys; d=json.load(sys.stdin); assert len(d["updates"]) == 1, d'
echo "interop: all checks passed"
