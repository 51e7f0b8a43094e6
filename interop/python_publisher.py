#!/usr/bin/env python3
"""Publish an upkeep repository with python-tuf's Metadata API alone, following
docs/repository-format.md: consistent snapshots, pretty-printed (non-canonical) JSON,
one update record on the top-level targets role and one on a delegated role.

usage: python_publisher.py DIR   -> writes DIR/metadata, DIR/targets, DIR/expected.json
"""

import json
import os
import sys
from datetime import datetime, timedelta, timezone

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

out = sys.argv[1]
os.makedirs(os.path.join(out, "metadata"), exist_ok=True)
expires = (datetime.now(timezone.utc) + timedelta(days=7)).replace(microsecond=0)
pretty = JSONSerializer(compact=False)

# Every key type upkeep verifies: ed25519 (hex public keys), and ECDSA P-256 and RSA-PSS,
# whose public keys python-tuf writes as PEM: line breaks inside the strings that
# canonical JSON signs raw.
signers = {role: CryptoSigner.generate_ed25519() for role in ["root", "targets"]}
signers["timestamp"] = CryptoSigner.generate_rsa()
signers["snapshot"] = CryptoSigner.generate_ecdsa()
signers["team"] = CryptoSigner.generate_ecdsa()

root = Root(expires=expires, consistent_snapshot=True)
for role in ["root", "timestamp", "snapshot", "targets"]:
    root.add_key(signers[role].public_key, role)


def write_target(path: str, data: bytes, custom=None) -> TargetFile:
    tf = TargetFile.from_data(path, data, ["sha256", "sha512"])
    if custom is not None:
        tf.unrecognized_fields["custom"] = custom
    d, _, name = path.rpartition("/")
    full = os.path.join(out, "targets", d, f"{tf.hashes['sha256']}.{name}")
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as f:
        f.write(data)
    return tf


def record(uid, title, content, **extra):
    r = {
        "schema": 1,
        "id": uid,
        "revision": 2,
        "title": title,
        "handler": {"kind": "files"},
        "content": content,
    }
    r.update(extra)
    return {"upkeep": r}


UID_A = "a0000000-0000-4000-8000-00000000000a"
UID_B = "b0000000-0000-4000-8000-00000000000b"
pa = f"updates/{UID_A}/2/payload.tar"
eula = f"updates/{UID_A}/2/eula/EULA.txt"
pb = f"updates/{UID_B}/2/setup.sh"

targets = Targets(expires=expires)
targets.targets[pa] = write_target(
    pa,
    b"python-published payload A",
    record(
        UID_A,
        "Published by python-tuf",
        [pa],
        severity="Critical",
        kb_article_ids=["4242"],
        categories=[{"id": "c0000000-0000-4000-8000-00000000000c", "name": "Interop"}],
        eula=eula,
        installation_behavior={"reboot_behavior": "CanRequestReboot"},
        # Multi-line text as docs/repository-format.md#text has it: a list of lines.
        description=["Published by python-tuf.", "", "  - with a list of lines"],
        release_notes=["Fixed:", "- the interop"],
    ),
)
targets.targets[eula] = write_target(eula, b"licence text\n")

team_role = DelegatedRole("team", [], 1, False, paths=["updates/*/*/*"])
targets.delegations = Delegations(keys={}, roles={"team": team_role})
targets.add_key(signers["team"].public_key, "team")
team = Targets(expires=expires)
team.targets[pb] = write_target(
    pb,
    b"#!/bin/sh\nexit 0\n",
    record(
        UID_B,
        "Delegated driver",
        [pb],
        type="Driver",
        handler={"kind": "command", "arguments": ["--install"], "uninstall_arguments": ["--remove"], "timeout_secs": 60},
    ),
)

snapshot = Snapshot(expires=expires)
snapshot.meta["targets.json"] = MetaFile(version=targets.version)
snapshot.meta["team.json"] = MetaFile(version=team.version)


def write_md(signed, role_name: str, key_role: str, filename: str) -> bytes:
    md = Metadata(signed)
    md.sign(signers[key_role])
    data = md.to_bytes(pretty)
    with open(os.path.join(out, "metadata", filename), "wb") as f:
        f.write(data)
    return data


write_md(root, "root", "root", "1.root.json")
write_md(targets, "targets", "targets", f"{targets.version}.targets.json")
write_md(team, "team", "team", f"{team.version}.team.json")
snap_bytes = write_md(snapshot, "snapshot", "snapshot", f"{snapshot.version}.snapshot.json")
timestamp = Timestamp(expires=expires)
timestamp.snapshot_meta = MetaFile(
    version=snapshot.version,
    length=len(snap_bytes),
    hashes={"sha256": __import__("hashlib").sha256(snap_bytes).hexdigest()},
)
write_md(timestamp, "timestamp", "timestamp", "timestamp.json")

with open(os.path.join(out, "expected.json"), "w") as f:
    json.dump({"ids": sorted([UID_A, UID_B]), "titles": sorted(["Published by python-tuf", "Delegated driver"])}, f)
print(f"python-tuf published 2 updates in {out}")
