#!/usr/bin/env python
"""Generate the synthetic CT phantom dataset (MSD layout). Same as ``textseg make-phantom``."""

import sys

from textseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["make-phantom", *sys.argv[1:]]))
