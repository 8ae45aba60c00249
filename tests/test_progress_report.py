"""Job progress (one bar over every training of a job), summary.md, and ``jaxicl reproduce --list``."""

import os
import re

import numpy as np

from jaxicl import cli, configs, progress, report, studies, sweep, train

BASE = ["train.steps=6", "train.log_every=3", "train.ckpt_every=3", "train.batch_size=8", "train.eval_prompts=64",
        "task.d=2", "task.n_points=5", "model.embed_dim=4", "model.heads=2"]


class FakeBar:
  """Records what the engine tells a tqdm bar."""

  def __init__(self, total=None, initial=0, desc=None):
    self.total, self.n, self.updates, self.postfix, self.closed, self.desc = total, initial, [], {}, False, desc

  def update(self, n):
    self.n += n
    self.updates.append(n)

  def set_postfix(self, refresh=True, **kw):
    self.postfix = kw

  def set_description(self, desc, refresh=True):
    self.desc = desc

  def close(self):
    self.closed = True


def test_train_advances_a_job_bar_by_its_steps_restored_ones_included(tmp_path):
  cfg = configs.get_config("study1", BASE)
  workdir = str(tmp_path / "run")
  first = FakeBar()
  train.train(cfg, workdir, stop_after=3, progress=first)
  assert first.n == 3 and not first.closed  # a job's bar stays open for the job's next training
  resumed = FakeBar()
  result = train.train(cfg, workdir, progress=resumed)
  assert resumed.updates == [3, 3] and resumed.n == cfg.train.steps  # 3 restored from the checkpoint, 3 trained
  assert resumed.postfix["loss"] == f"{float(np.mean(result.history[-1]['loss'])):.4g}"


def test_sweep_shows_one_bar_for_all_groups_and_one_line_per_group(tmp_path, monkeypatch, capsys):
  bars = []
  monkeypatch.setattr(progress, "make_bar", lambda total, initial=0, desc=None: bars.append(FakeBar(total)) or bars[-1])
  out = str(tmp_path / "sw")
  # one seed: the d=2 group's config is the one trained above, so its compiled engine is reused
  base = [b for b in BASE if not b.startswith("task.d=")]  # the grid sets it
  rows = sweep.run_sweep("study1", ["task.d=2,3"], 1, out, base, progress=True)
  again = sweep.run_sweep("study1", ["task.d=2,3"], 1, out, base, progress=True)  # finished groups: only read
  assert again == rows
  assert [(b.total, b.n, b.closed) for b in bars] == [(12, 12, True), (12, 12, True)]  # 2 groups × 6 steps
  lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[sweep] group")]
  assert len(lines) == 4 and lines[0].startswith("[sweep] group 1/2 {'task.d': '2'}")
  losses = [float(v) for v in re.search(r"final loss (\S+) to (\S+)$", lines[0]).groups()]
  group = [r["final_loss"] for r in rows if r["task.d"] == "2"]
  np.testing.assert_allclose(losses, [min(group), max(group)], rtol=1e-3)
  sweep.run_sweep("study1", ["task.d=2,3"], 1, out, base, progress=False)
  assert len(bars) == 2 and "[sweep]" not in capsys.readouterr().out


def _parse_table(text: str, caption: str) -> list[list[str]]:
  block = text.split(f"## {caption}\n\n")[1].split("\n\n")[0].splitlines()
  return [[c.strip() for c in line.strip("|").split(" | ")] for line in block if not line.startswith("|---")]


def test_summary_md_tables_notes_and_relative_figure_links(tmp_path):
  out = tmp_path / "run"
  (out / "figs").mkdir(parents=True)
  for name in ("a.png", "a.pdf", "b.png"):
    (out / "figs" / name).write_bytes(b"x")
  rows = [{"D": 8, "h": 1, "dl": 7.31999, "ok": True}, {"D": 16, "h": 2, "dl": float("nan"), "note": "a|b"}]
  path = report.write_summary_md(str(out / "summary.md"), "Study X", {"Main": rows}, ["first note"],
                                 [str(out / "figs" / "a.png"), str(out / "figs" / "b.png")], intro="Intro.")
  text = open(path).read()
  assert text.startswith("# Study X\n\nIntro.\n")
  assert _parse_table(text, "Main") == [["D", "h", "dl", "ok", "note"], ["8", "1", "7.32", "true", ""],
                                        ["16", "2", "nan", "", "a\\|b"]]
  assert "- first note" in text
  links = re.findall(r"\]\(([^)]+)\)", text)
  assert links == ["figs/a.png", "figs/a.png", "figs/a.pdf", "figs/b.png", "figs/b.png"]  # b has no PDF
  assert all((out / link).exists() for link in links)
  assert sorted(os.listdir(out)) == ["figs", "summary.md"]  # written atomically: no temp file left


def test_reproduce_list_prints_every_preset_with_its_documented_time(capsys):
  from jaxicl.studies.head_utilization import run as study2
  from jaxicl.studies.multihead import presets as study1
  assert cli.main(["reproduce", "--list"]) == 0
  text = " ".join(capsys.readouterr().out.split())
  expected = {("multihead", name): study1.configure(name).doc for name in study1.PRESETS}
  expected.update({("head-utilization", name): fn.__doc__ for name, fn in study2.PRESETS.items()})
  for (study, name), doc in expected.items():
    parsed = studies.parse_doc(doc)
    assert parsed["time"] and parsed["command"].startswith(f"jaxicl reproduce {study} --preset {name} ")
    assert f"{study} --preset {name}:" in text
    assert f"expected time: {parsed['time']}" in text and f"command: {parsed['command']}" in text


def test_reproduce_without_study_or_out_is_a_usage_error(capsys, tmp_path):
  assert cli.main(["reproduce", "multihead"]) == 2
  assert cli.main(["reproduce", "--out", str(tmp_path)]) == 2
  assert "--out are required (or --list)" in capsys.readouterr().err


def test_job_progress_disabled_has_no_bar_and_prints_nothing(capsys):
  with progress.JobProgress(10, "job", enabled=False) as job:
    job.stage("x")
    job.skip(5)
    job.line("hidden")
  assert job.bar is None and capsys.readouterr().out == ""
