#!/usr/bin/env python
"""Regenerate every bundle's vocabulary-derived metadata and model-card label table.

Usage: python scripts/sync_vocabulary.py [--check]
"""

import argparse
import sys
from pathlib import Path

from textseg.bundle import sync_bundle


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files; exit 1 if any")
    parser.add_argument("--bundles", default=str(Path(__file__).resolve().parents[1] / "bundles"))
    args = parser.parse_args()
    stale = []
    for bundle in sorted(p.parent.parent for p in Path(args.bundles).glob("*/configs/metadata.json")):
        stale += sync_bundle(bundle, write=not args.check)
    for path in stale:
        print(("stale: " if args.check else "updated: ") + str(path))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
