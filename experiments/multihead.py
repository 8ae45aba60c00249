"""Study 1 entry point from a checkout (not installed): ``python experiments/multihead.py --preset quick --out DIR``.

Same as ``jaxicl reproduce multihead ...``; the study itself lives in ``jaxicl/studies/multihead``."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxicl.cli import entry  # noqa: E402

if __name__ == "__main__":
  sys.exit(entry(["reproduce", "multihead", *sys.argv[1:]]))
