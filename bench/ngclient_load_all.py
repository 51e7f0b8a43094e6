#!/usr/bin/env python3
"""The peer for bench/catalog.sh: python-tuf's ngclient refreshes and then loads every
hashed bin (by looking up one target per bin), verifying all the metadata a catalog needs.

usage: ngclient_load_all.py BASE_URL TRUSTED_ROOT PATHS_FILE METADATA_DIR
"""
import sys

from tuf.ngclient import Updater

base, root, paths_file, md_dir = sys.argv[1:5]
with open(root, "rb") as f:
    root_bytes = f.read()
with open(paths_file) as f:
    paths = [line.strip() for line in f if line.strip()]
updater = Updater(md_dir, base + "metadata/", None, base + "targets/", bootstrap=root_bytes)
updater.refresh()
found = sum(1 for p in paths if updater.get_targetinfo(p) is not None)
assert found == len(paths), (found, len(paths))
