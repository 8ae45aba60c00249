"""Tables of the partial study-1 `full` run on one H100 (2026-11-26): `run.build_tables` on the finished groups.

The run stopped at its time limit after 9 of 24 programs (118 of 154 groups); the programs' checkpoints stayed on the
leased machine, so the head analysis (figure 5, which reads the d = 5, D = 500 groups' parameters) is left out and
those groups' main-table rows are computed here with the same formulas. From the repository root, ~3.5 min on the
2-core CPU (the finite-D Monte Carlo optima at the preset's 20000 prompts):

  python results/accelerator_NVIDIA_H100_80GB_HBM3/multihead_full_partial/tables.py \
      results/accelerator_NVIDIA_H100_80GB_HBM3/multihead_full_partial OUT
"""
import json
import os
import sys

from jaxicl.studies.multihead import presets, run

src, out = sys.argv[1], sys.argv[2]
spec = presets.configure("full")
planned = run.plan(spec)
by_name = {g.name: g for g in planned}
records = {}
for f in sorted(os.listdir(os.path.join(src, "groups"))):
  rec = json.load(open(os.path.join(src, "groups", f)))
  records[by_name[rec["name"]]] = rec
print(len(records), "of", len(planned), "groups")
head_D = max(spec.study.Ds)
heads = {g: r for g, r in records.items() if "main" in r["sections"] and g.d == spec.study.head_d and g.D == head_D}
rest = {g: r for g, r in records.items() if g not in heads}
tables = run.build_tables(spec, rest, {}, print)
fin = tables["finite_d"]
cache = {}
for g, rec in sorted(heads.items()):
  th = run._theory_for(g, cache)
  j = fin[g.d]["D"].index(g.D)
  row = {"d": g.d, "D": g.D, "h": g.h, "p": g.p, "n_seeds": len(rec["dl"]), "dl_mean": rec["dl_mean"],
         "dl_se": rec["dl_se"], "dl_prompt_se": rec["dl_prompt_se"], "C_single": th["C_single"], "C_multi": th["C_multi"],
         "ratio_to_constant": rec["dl_mean"] / run._reference(g.h, th),
         "mc_single_dl": fin[g.d]["single"][j], "mc_pair_dl": fin[g.d]["pair"][j]}
  row["ratio_to_finite_d"] = rec["dl_mean"] / (row["mc_single_dl"] if g.h == 1 else row["mc_pair_dl"])
  tables["main"].append(row)
tables["main"].sort(key=lambda r: (r["d"], r["D"], r["h"]))
os.makedirs(out, exist_ok=True)
for name in ("main", "scenarios", "ablations"):
  run._write_csv(os.path.join(out, f"{name}_table.csv" if name == "main" else f"{name}.csv"), tables[name])
order = run.ordering(tables["main"])
json.dump({"ordering": order, "gap_notes": run.gap_notes(tables), "section_notes": run.section_notes(tables),
           "finite_d": {str(k): v for k, v in fin.items()}}, open(os.path.join(out, "analysis.json"), "w"), indent=1)
for o in order: print(o)
