"""Checkpoint manifests: complete or absent, corrupt ones skipped with a warning or refused,
and a failed write (a full disk, by RLIMIT_FSIZE) that leaves the earlier checkpoints intact."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tensorflow_mean_teacher import checkpoints


def manager_of(directory, size=1000):
    variable = tf.Variable(tf.zeros([size]))
    checkpoint = tf.train.Checkpoint(variable=variable)
    return variable, checkpoints.manager(checkpoint, directory)


def saved_steps(directory, record=None):
    """Checkpoints at steps 0, 5, 10 whose variable holds the step."""
    variable, manager = manager_of(directory)
    for step in (0, 5, 10):
        variable.assign(tf.fill(variable.shape, float(step)))
        checkpoints.save(manager, step, record or {"run": 1})
    return variable, manager


def restored_value(path):
    return float(tf.train.load_checkpoint(path).get_tensor(
        "variable/.ATTRIBUTES/VARIABLE_VALUE")[0])


def test_a_saved_checkpoint_has_a_manifest_of_its_files(tmp_path):
    saved_steps(tmp_path)
    manifest = json.loads((tmp_path / "ckpt-10.manifest.json").read_text())
    assert manifest["step"] == 10 and manifest["config"] == {"run": 1}
    names = sorted(p.name for p in checkpoints.checkpoint_files(tmp_path / "ckpt-10"))
    assert sorted(manifest["files"]) == names == ["ckpt-10.data-00000-of-00001",
                                                  "ckpt-10.index"]
    for name, entry in manifest["files"].items():
        assert entry["bytes"] == (tmp_path / name).stat().st_size
    lines = []
    path, found = checkpoints.latest_complete(tmp_path, lines.append)
    assert path == str(tmp_path / "ckpt-10") and found == manifest and lines == []


def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_one_naming_both(tmp_path):
    saved_steps(tmp_path)
    data = tmp_path / "ckpt-10.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:100])
    lines = []
    path, _ = checkpoints.latest_complete(tmp_path, lines.append)
    assert path == str(tmp_path / "ckpt-5") and restored_value(path) == 5.0
    assert len(lines) == 1 and "corrupt checkpoint" in lines[0]
    assert str(tmp_path / "ckpt-10") in lines[0] and "has 100 bytes" in lines[0]
    assert lines[0].endswith(f"resuming from {tmp_path / 'ckpt-5'}")


def test_a_flipped_byte_is_caught_by_the_checksum(tmp_path):
    saved_steps(tmp_path)
    data = tmp_path / "ckpt-10.data-00000-of-00001"
    content = bytearray(data.read_bytes())
    content[len(content) // 2] ^= 0xFF  # same size, other bytes
    data.write_bytes(bytes(content))
    lines = []
    path, _ = checkpoints.latest_complete(tmp_path, lines.append)
    assert path.endswith("ckpt-5") and "does not match its checksum" in lines[0]


def test_a_checkpoint_without_its_manifest_is_an_interrupted_write(tmp_path):
    saved_steps(tmp_path)
    (tmp_path / "ckpt-10.manifest.json").unlink()  # killed between the data and the manifest
    lines = []
    path, _ = checkpoints.latest_complete(tmp_path, lines.append)
    assert path.endswith("ckpt-5")
    assert "incomplete checkpoint" in lines[0] and "no manifest" in lines[0]


def test_a_manifest_that_is_not_json_marks_its_checkpoint_corrupt(tmp_path):
    saved_steps(tmp_path)
    (tmp_path / "ckpt-10.manifest.json").write_text('{"files": ')
    status, why = checkpoints.check(tmp_path / "ckpt-10")
    assert status == "corrupt" and "not valid JSON" in why


def test_no_intact_checkpoint_left_is_refused_not_started_over(tmp_path):
    saved_steps(tmp_path)
    for step in (0, 5, 10):
        (tmp_path / f"ckpt-{step}.index").write_bytes(b"damaged")
    with pytest.raises(checkpoints.CorruptCheckpointError,
                       match=r"No intact checkpoint in .*ckpt-10.*ckpt-5.*ckpt-0.*Refusing to "
                             r"start the run over"):
        checkpoints.latest_complete(tmp_path, print)


def test_only_an_interrupted_first_checkpoint_starts_from_step_0_with_a_warning(tmp_path):
    variable, manager = manager_of(tmp_path)
    checkpoints.save(manager, 0, {})
    (tmp_path / "ckpt-0.manifest.json").unlink()
    lines = []
    assert checkpoints.latest_complete(tmp_path, lines.append) == (None, None)
    assert "starting from step 0" in lines[0]


def test_a_directory_from_before_manifests_resumes_from_tensorflows_latest(tmp_path):
    variable, manager = manager_of(tmp_path)
    manager.save(checkpoint_number=7)  # as runs before manifests wrote them
    assert checkpoints.latest_complete(tmp_path, print) == (str(tmp_path / "ckpt-7"), None)


def test_the_newest_complete_checkpoints_are_kept_with_their_manifests(tmp_path):
    variable, manager = manager_of(tmp_path)
    for step in range(5):
        checkpoints.save(manager, step, {}, keep=3)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == [
        f"ckpt-{n}.{kind}" for n in (2, 3, 4)
        for kind in ("data-00000-of-00001", "index", "manifest.json")]


def test_an_incomplete_checkpoint_does_not_count_as_kept(tmp_path):
    """Old checkpoints go only once the new one is complete, and only complete ones count:
    a kill between a save and its manifest never leaves fewer intact checkpoints than kept."""
    variable, manager = manager_of(tmp_path)
    checkpoints.save(manager, 0, {}, keep=1)
    checkpoints.save(manager, 1, {}, keep=1)
    assert not checkpoints.checkpoint_files(tmp_path / "ckpt-0")
    (tmp_path / "ckpt-1.manifest.json").unlink()  # as if killed before the manifest of 1
    checkpoints.save(manager, 2, {}, keep=2)
    assert checkpoints.check(tmp_path / "ckpt-2")[0] == "complete"
    assert checkpoints.check(tmp_path / "ckpt-1")[0] == "incomplete"  # not swept: newer than
    with pytest.raises(ValueError, match="max_to_keep=3"):  # the oldest kept complete one
        checkpoints.save(tf.train.CheckpointManager(tf.train.Checkpoint(v=variable),
                                                    str(tmp_path / "other"), max_to_keep=3),
                         0, {})


def test_checkpoints_from_before_manifests_get_theirs_at_the_first_save(tmp_path):
    variable, manager = manager_of(tmp_path)
    manager.save(checkpoint_number=7)  # an older version of the project wrote these
    manager.save(checkpoint_number=8)
    checkpoints.save(manager, 9, {"run": 1})
    assert [checkpoints.check(tmp_path / f"ckpt-{n}")[0] for n in (7, 8, 9)] == ["complete"] * 3
    (tmp_path / "ckpt-9.index").write_bytes(b"damaged")  # the new one broken: fall back to 8
    path, _ = checkpoints.latest_complete(tmp_path, lambda _: None)
    assert path == str(tmp_path / "ckpt-8")


def test_a_manifest_entry_that_is_not_a_size_and_checksum_is_corrupt(tmp_path):
    saved_steps(tmp_path)
    (tmp_path / "ckpt-10.manifest.json").write_text(json.dumps(
        {"files": {"ckpt-10.index": 3}}))
    status, why = checkpoints.check(tmp_path / "ckpt-10")
    assert status == "corrupt" and "is not a size and a checksum" in why


def test_a_full_disk_during_a_save_is_an_error_and_the_previous_checkpoint_stays(
        tmp_path, file_size_limit):
    variable, manager = manager_of(tmp_path, size=100_000)  # 400 kB of data
    variable.assign(tf.fill(variable.shape, 1.0))
    checkpoints.save(manager, 1, {})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    variable.assign(tf.fill(variable.shape, 2.0))
    with file_size_limit(50_000), pytest.raises(
            checkpoints.ResultsWriteError,
            match=r"Could not write checkpoint .*ckpt-2.*File too large\. The previous "
                  r"checkpoint .*ckpt-1 is intact\."):
        checkpoints.save(manager, 2, {})
    # Nothing of the failed save is left, and checkpoint 1 is as it was.
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    path, _ = checkpoints.latest_complete(tmp_path, print)
    assert path.endswith("ckpt-1") and restored_value(path) == 1.0
    np.testing.assert_array_equal(variable.numpy(), 2.0)
