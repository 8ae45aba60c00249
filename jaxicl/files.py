"""Atomic file writes: a reader (or a run killed mid-write) sees the old file or the new one, never a part; and the
one reader of the JSON files jaxicl writes, whose errors name the file."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable


def atomic_write(path: str, write: Callable[[str], None]) -> str:
  """``write(tmp)`` to a temporary file in ``path``'s folder, then rename it onto ``path``; returns ``path``."""
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".")
  os.close(fd)
  umask = os.umask(0)
  os.umask(umask)
  try:
    write(tmp)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def write_text(path: str, text: str) -> str:
  """Atomically writes ``text`` as UTF-8 (flushed to disk before the rename)."""
  return write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str, data: bytes) -> str:
  """Atomically writes ``data`` (flushed to disk before the rename)."""

  def write(tmp: str) -> None:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())

  return atomic_write(path, write)


def write_json(path: str, obj: Any, indent: int | None = 1) -> str:
  """Atomically writes ``obj`` as JSON."""
  return write_text(path, json.dumps(obj, indent=indent))


def read_json(path: str) -> Any:
  """The JSON value in ``path``; ``ValueError`` naming the file if it cannot be read or is not JSON (a missing file
  stays ``FileNotFoundError``, for callers that treat it as not written yet)."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError:
    raise
  except OSError as e:
    raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None


FOLDER_IN_THE_WAY = "a file where the command needs a folder; move it away"


def check_folders(base: str, names: tuple[str, ...]) -> None:
  """``ValueError`` naming the path if any ``base/name`` exists and is not a folder (a file where a command will
  write a folder), so that the command stops before its work instead of after it."""
  for name in names:
    path = os.path.join(base, name)
    if os.path.lexists(path) and not os.path.isdir(path):
      raise ValueError(f"{path}: {FOLDER_IN_THE_WAY}")
