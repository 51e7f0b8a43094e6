#!/usr/bin/env python3
"""python-tuf's ngclient against a repository that upkeep published: refresh, look up every
target, download it, and compare it with the bytes upkeep was given.

usage: python_client.py BASE_URL TRUSTED_ROOT EXPECTED_JSON
  EXPECTED_JSON maps target paths to local files with the expected content.
"""

import json
import os
import shutil
import sys
import tempfile

from tuf.ngclient import Updater

base, trusted_root, expected_file = sys.argv[1:4]
with open(expected_file) as f:
    expected = json.load(f)
with open(trusted_root, "rb") as f:
    root_bytes = f.read()

work = tempfile.mkdtemp(prefix="upkeep-ngclient-")
try:
    md_dir = os.path.join(work, "metadata")
    dl_dir = os.path.join(work, "downloads")
    os.makedirs(md_dir)
    os.makedirs(dl_dir)
    updater = Updater(md_dir, base + "metadata/", dl_dir, base + "targets/", bootstrap=root_bytes)
    updater.refresh()
    for path, source in expected.items():
        info = updater.get_targetinfo(path)
        assert info is not None, f"{path} not found by python-tuf"
        got = updater.download_target(info)
        with open(got, "rb") as a, open(source, "rb") as b:
            assert a.read() == b.read(), f"{path}: downloaded bytes differ"
        custom = info.unrecognized_fields.get("custom", {})
        if "upkeep" in custom:
            assert custom["upkeep"]["content"][0] == path, f"{path}: record not on first content"
    assert updater.get_targetinfo("updates/does-not-exist") is None
    # A second client run on the same metadata is a no-op refresh.
    Updater(md_dir, base + "metadata/", dl_dir, base + "targets/", bootstrap=None).refresh()
    print(f"python-tuf verified and downloaded {len(expected)} targets from {base}")
finally:
    shutil.rmtree(work)
