"""outputs.py: an output is written once, by one writer, and a failed write leaves nothing
(no temporary file, no lock, no folder made for it). The commands' own cases are in
test_embed_cli.py and test_finetune.py."""

import os

import pytest

from nlm_jax import outputs
from nlm_jax.errors import UserError


def never(_):
  return False


def check(path):
  return lambda: outputs.check_file(path, False, ".csv", "classify", never)


def test_a_written_output_appears_whole_and_nothing_else_stays(tmp_path):
  out = str(tmp_path / "new" / "deeper" / "out.csv")
  with outputs.writing(out, check(out)) as tmp:
    assert os.path.dirname(tmp) == os.path.dirname(out) and not os.path.exists(out)
    assert os.path.exists(out + ".lock")
    with open(tmp, "w") as f:
      f.write("id\n")
  assert open(out).read() == "id\n"
  assert os.listdir(os.path.dirname(out)) == ["out.csv"]


def test_a_failed_write_leaves_nothing_and_removes_the_folders_it_made(tmp_path):
  out = str(tmp_path / "new" / "deeper" / "out.csv")
  with pytest.raises(RuntimeError):
    with outputs.writing(out, check(out)) as tmp:
      open(tmp, "w").write("half")
      raise RuntimeError("stopped halfway")
  assert os.listdir(tmp_path) == []


def test_a_write_that_the_disk_refuses_is_one_line_naming_out(tmp_path):
  out = str(tmp_path / "out.csv")
  with pytest.raises(UserError, match=r"writing OUT '.*out.csv' failed \(No space left on device\): "
                                      "free disk space, or choose another OUT"):
    with outputs.writing(out, check(out)):
      raise OSError(28, "No space left on device")
  assert os.listdir(tmp_path) == []


def test_a_second_writer_stops_naming_the_first_and_changes_nothing(tmp_path):
  out = str(tmp_path / "out.csv")
  with outputs.writing(out, check(out)) as tmp:
    open(tmp, "w").write("first\n")
    with pytest.raises(UserError, match=f"OUT '.*out.csv' is being written by process {os.getpid()}"):
      with outputs.writing(out, check(out)):
        pytest.fail("the second writer ran")
  assert open(out).read() == "first\n"
  # Once the first is done, a second without --overwrite finds OUT (checked under the lock).
  with pytest.raises(UserError, match="exists: choose another name or add --overwrite"):
    with outputs.writing(out, check(out)):
      pytest.fail("the second writer ran")
  assert open(out).read() == "first\n" and sorted(os.listdir(tmp_path)) == ["out.csv"]


def test_a_folder_output_replaces_the_old_one_only_when_whole(tmp_path):
  out = tmp_path / "export"
  out.mkdir()
  (out / "old.txt").write_text("old")
  with pytest.raises(RuntimeError):
    with outputs.writing(str(out), lambda: None, "OUT_DIR", folder=True) as tmp:
      open(os.path.join(tmp, "new.txt"), "w").write("new")
      raise RuntimeError
  assert os.listdir(out) == ["old.txt"] and sorted(os.listdir(tmp_path)) == ["export"]
  with outputs.writing(str(out), lambda: None, "OUT_DIR", folder=True) as tmp:
    os.close(os.open(os.path.join(tmp, "new.txt"), os.O_CREAT | os.O_WRONLY, 0o600))  # private
  assert os.listdir(out) == ["new.txt"] and sorted(os.listdir(tmp_path)) == ["export"]
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(out).st_mode & 0o777 == 0o777 & ~umask  # as a folder made with os.mkdir
  assert os.stat(out / "new.txt").st_mode & 0o777 == 0o666 & ~umask
