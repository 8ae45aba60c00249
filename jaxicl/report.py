"""A run's ``summary.md``: title, tables (lists of row dicts), notes and links to its figures, written atomically.

    report.write_summary_md(os.path.join(out, "summary.md"), "Study 1 (preset tiny)",
                            tables={"Main table": rows}, notes=["..."], figures=[png_path, ...])

Figure paths are written relative to the summary's folder (the folder can be moved or zipped); a PNG is shown
inline and its PDF sibling (``jaxicl.plotting.save`` writes both) linked next to it.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable, Mapping, Sequence

from jaxicl import files


def format_cell(value: Any) -> str:
  """One table cell: floats to 4 significant digits (``nan``/``inf`` spelled out), lists joined, ``|`` escaped."""
  if isinstance(value, bool) or value is None:
    text = "" if value is None else str(value).lower()
  elif isinstance(value, float):
    text = f"{value:.4g}" if math.isfinite(value) else str(value)
  elif isinstance(value, (list, tuple)):
    text = ", ".join(format_cell(v) for v in value)
  else:
    text = str(value)
  return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
  """A GitHub-flavoured markdown table of ``rows``; columns: ``columns`` or the union of the rows' keys in order
  of first appearance (a missing cell is empty)."""
  if not rows:
    return "(no rows)"
  if columns is None:
    columns = []
    for row in rows:
      columns += [k for k in row if k not in columns]
  lines = ["| " + " | ".join(format_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
  for row in rows:
    lines.append("| " + " | ".join(format_cell(row.get(c)) for c in columns) + " |")
  return "\n".join(lines)


def summary_markdown(title: str, tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                     notes: Iterable[str] = (), figures: Iterable[str] = (), base_dir: str = ".",
                     intro: str = "") -> str:
  """The markdown text: ``# title``, ``intro``, one ``##`` section per table (caption -> rows), the notes as a
  list, then every figure (paths made relative to ``base_dir``)."""
  parts = [f"# {title}", ""]
  if intro:
    parts += [intro.strip(), ""]
  for caption, rows in (tables or {}).items():
    parts += [f"## {caption}", "", markdown_table(list(rows)), ""]
  notes = list(notes)
  if notes:
    parts += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
  figures = list(figures)
  if figures:
    parts += ["## Figures", ""]
    for path in figures:
      rel = os.path.relpath(path, base_dir).replace(os.sep, "/")
      stem, ext = os.path.splitext(rel)
      name = os.path.basename(stem)
      if ext.lower() == ".png":
        pdf = os.path.splitext(path)[0] + ".pdf"
        link = f" ([PDF]({stem}.pdf))" if os.path.exists(pdf) else ""
        parts += [f"![{name}]({rel})", "", f"[{name}]({rel}){link}", ""]
      else:
        parts += [f"- [{name}]({rel})", ""]
  return "\n".join(parts).rstrip() + "\n"


def write_summary_md(path: str, title: str, tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                     notes: Iterable[str] = (), figures: Iterable[str] = (), intro: str = "") -> str:
  """Writes ``summary_markdown(...)`` to ``path`` atomically (figure links relative to ``path``'s folder);
  returns ``path``."""
  base = os.path.dirname(os.path.abspath(path))
  text = summary_markdown(title, tables, notes, [os.path.abspath(f) for f in figures], base, intro)
  return files.write_text(path, text)
