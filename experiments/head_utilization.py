"""Study 2 entry point from a checkout (not installed): ``python experiments/head_utilization.py --preset quick
--out DIR``. Same as ``jaxicl reproduce head-utilization ...``; the study lives in ``jaxicl/studies/head_utilization``."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxicl.cli import entry  # noqa: E402

if __name__ == "__main__":
  sys.exit(entry(["reproduce", "head-utilization", *sys.argv[1:]]))
