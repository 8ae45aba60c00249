"""Atomic file writes: a reader (or a run killed mid-write) sees the old file or the new one, never a part; and the
one reader of the JSON files jaxicl writes, whose errors name the file."""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any, Callable


def atomic_write(path: str, write: Callable[[str], None]) -> str:
  """``write(tmp)`` to a temporary file in ``path``'s folder, then rename it onto ``path``; returns ``path``.
  ``ValueError`` naming ``path`` if a folder is there."""
  check_files(os.path.dirname(path), (os.path.basename(path),))
  folder = os.path.dirname(os.path.abspath(path))
  _remove_temporaries(folder, os.path.basename(path))  # of an earlier write of this file that was killed
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.{os.getpid()}.")
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


# ``atomic_write``'s temporary files: "." + the target's name + "." + the writer's pid + "." + mkstemp's 8 random
# characters. A process killed mid-write (SIGKILL: no cleanup runs) leaves one behind.
_TEMPORARY = re.compile(r"\.(.+)\.(\d+)\.[a-z0-9_]{8}")


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:  # exists, owned by another user
    return True
  return True


def _remove_temporaries(folder: str, target: str | None = None) -> None:
  """Removes the files in ``folder`` that ``atomic_write`` left half-written (of ``target`` only, if given) in a
  process that no longer runs (a live writer's, e.g. a concurrent ``jaxicl eval``'s, are left alone)."""
  try:
    names = os.listdir(folder)
  except OSError:
    return
  for name in names:
    match = _TEMPORARY.fullmatch(name)
    if (match and (target is None or match.group(1) == target) and not _alive(int(match.group(2)))
        and os.path.isfile(os.path.join(folder, name))):
      os.remove(os.path.join(folder, name))


def remove_temporaries(folder: str, skip: tuple[str, ...] = ("checkpoints", "checkpoints_corrupt")) -> None:
  """``_remove_temporaries`` in ``folder`` and every subfolder but those named in ``skip`` (Orbax's)."""
  for root, dirs, _ in os.walk(folder):
    dirs[:] = [d for d in dirs if d not in skip]
    _remove_temporaries(root)


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


def prepare_output(path: str) -> str:
  """Makes ``path``'s folder and checks that a file can be written there, before the work whose result it will
  hold (a benchmark that runs for an hour must not fail at its last line); ``ValueError`` naming the path."""
  check_files(os.path.dirname(path), (os.path.basename(path),))
  folder = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise ValueError(f"{path}: cannot make its folder ({e.strerror or e})") from None
  if not os.access(folder, os.W_OK | os.X_OK):
    raise ValueError(f"{path}: cannot write in {folder}")
  return path


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
FILE_IN_THE_WAY = "a folder where the command writes a file; move it away"


def check_folders(base: str, names: tuple[str, ...]) -> None:
  """``ValueError`` naming the path if any ``base/name`` exists and is not a folder (a file where a command will
  write a folder), so that the command stops before its work instead of after it."""
  for name in names:
    path = os.path.join(base, name)
    if os.path.lexists(path) and not os.path.isdir(path):
      raise ValueError(f"{path}: {FOLDER_IN_THE_WAY}")


def check_files(base: str, names: tuple[str, ...]) -> None:
  """``ValueError`` naming the path if any ``base/name`` is a folder (where a command will write a file)."""
  for name in names:
    path = os.path.join(base, name)
    if os.path.isdir(path):
      raise ValueError(f"{path}: {FILE_IN_THE_WAY}")


# What wrote a folder, so that another command does not mix its files in (or overwrite its results): the kind
# ("training run", "sweep", "study multihead", ...) and an identity (a sweep's grid, a study's preset).
FOLDER_RECORD = ".jaxicl.json"
_KIND_SIGNS = (("training run", ("config.json", "checkpoints")), ("sweep", ("plans", "results.json")),
               ("study multihead", ("programs",)), ("study head-utilization", ("records", "runs", "baselines")))


def claim_folder(path: str, kind: str, field: str, identity: str | None = None, about: str = "") -> None:
  """Records in ``path/.jaxicl.json`` that a ``kind`` (with ``identity``, described by ``about``) writes in
  ``path``; ``ValueError`` naming ``field`` and the path if the folder holds another kind, or the same kind with
  another identity. A folder without the record (written before it existed) is judged by what it holds. Removes the
  temporary files of writes that a killed command left (``remove_temporaries``)."""
  remove_temporaries(path)  # left by a command killed mid-write; the caller holds the folder's lock
  record_path = os.path.join(path, FOLDER_RECORD)
  try:
    record = read_json(record_path)
  except (FileNotFoundError, ValueError):  # none yet, or damaged: judged by the folder's contents and rewritten
    record = None
  if not (isinstance(record, dict) and isinstance(record.get("kind"), str)):
    record = None
  held = record["kind"] if record else next(
      (k for k, signs in _KIND_SIGNS if any(os.path.lexists(os.path.join(path, s)) for s in signs)), None)
  if held is not None and held != kind:
    raise ValueError(f"{field}={path!r}: holds a {held}, not a {kind}; use another {field}")
  if record and identity is not None and record.get("identity") not in (None, identity):
    raise ValueError(f"{field}={path!r}: holds another {kind} ({record.get('about') or 'other settings'}); use "
                     f"another {field}")
  new = {"kind": kind, "identity": identity, "about": about}
  if record != new:
    write_json(record_path, new)
