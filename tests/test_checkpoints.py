"""Checkpoint files on their own: round trip, rotation, best.pt, damaged and foreign files."""

import pytest
import torch

from sagan.checkpoints import CheckpointManager, load_checkpoint, save_checkpoint
from sagan.console import UserError


def _state(step):
    return {"step": step, "w": torch.full((3,), float(step)), "nested": {"a": [1, 2.5, "x"]}}


def test_round_trip_with_weights_only_and_rotation_keeps_the_newest(tmp_path):
    mgr = CheckpointManager(tmp_path / "ckpts", keep=2)
    for step in (1, 2, 3):
        mgr.save(step, _state(step))
    assert [p.name for p in mgr.paths()] == ["ckpt_00000002.pt", "ckpt_00000003.pt"]
    path, state = mgr.latest()
    assert path.name == "ckpt_00000003.pt" and state["nested"] == {"a": [1, 2.5, "x"]}
    assert torch.equal(state["w"], torch.full((3,), 3.0))
    mgr.save_best(_state(2))
    for step in (4, 5, 6):
        mgr.save(step, _state(step))
    assert mgr.best_path.exists() and load_checkpoint(mgr.best_path)["step"] == 2  # never pruned
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == ["best.pt", "ckpt_00000005.pt", "ckpt_00000006.pt"]


def test_latest_skips_damaged_newer_files_with_a_warning_and_never_deletes_them(tmp_path, capsys):
    mgr = CheckpointManager(tmp_path, keep=5)
    for step in (1, 2):
        mgr.save(step, _state(step))
    (tmp_path / "ckpt_00000003.pt").write_bytes(b"garbage")
    path, state = mgr.latest()
    assert state["step"] == 2 and "ckpt_00000003.pt is not readable" in capsys.readouterr().err
    assert (tmp_path / "ckpt_00000003.pt").exists()
    mgr.latest(set_aside=True)
    assert (tmp_path / "ckpt_00000003.pt.unreadable").read_bytes() == b"garbage"


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_foreign_and_malicious_files_are_refused_without_running_code(tmp_path, capsys):
    torch.save({"x": _RunsCode()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="not readable"):
        load_checkpoint(tmp_path / "evil.pt")
    assert "this must never run" not in capsys.readouterr().out
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(UserError, match="not a sagan checkpoint"):
        load_checkpoint(tmp_path / "list.pt")
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    save_checkpoint(_state(1), tmp_path / "ok.pt")
    assert load_checkpoint(tmp_path / "ok.pt")["step"] == 1
