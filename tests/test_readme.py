"""The README's Python example runs as written (in a temporary directory)."""

import os
import re

import numpy as np

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_readme_python_example_runs(tmp_path, monkeypatch):
  text = open(README).read()
  blocks = re.findall(r"```python\n(.*?)```", text, re.S)
  assert blocks, "README has no python example"
  monkeypatch.chdir(tmp_path)
  scope: dict = {}
  exec(compile(blocks[0], "README.md", "exec"), scope)
  assert os.path.exists(tmp_path / "runs" / "demo" / "config.json")
  assert len(scope["result"].config.runs) == 4
  risk = np.asarray(scope["risk"])
  assert risk.shape == (40,) and risk[39] < 0.2 * risk[10]  # Lasso on 3-sparse w in d=20 learns from 39 examples
