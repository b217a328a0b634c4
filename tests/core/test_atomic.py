"""Every file another process reads is replaced whole (nullviz.core.atomic): jobs, checkpoints, noise files."""

import pytest

from nullviz.core.atomic import replace_atomically, write_json_atomic, write_text_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = tmp_path / "status.json"
    write_json_atomic(target, {"state": "running"})

    def half_then_fail(tmp):
        tmp.write_text('{"state": "do')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_atomically(target, half_then_fail)
    assert target.read_text() == '{"state": "running"}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]
    write_text_atomic(target, "done")
    assert target.read_text() == "done" and len(list(tmp_path.iterdir())) == 1
