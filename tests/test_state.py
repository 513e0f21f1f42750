"""The state file (proxy/control/state.py): written whole or not at all, a file that
cannot be trusted moved aside rather than deleted, and the temp files a killed writer
leaves behind cleaned up. Restoring routes from it is in test_plane.py; stale temp files
at a real start-up are in test_lifecycle.py."""

from __future__ import annotations

import json
import os

import pytest

from proxy.control.state import STATE_VERSION, StateFile


def test_saved_state_reads_back_with_its_version(tmp_path):
    state = StateFile(str(tmp_path / "state.json"))
    state.save({"routes": {"chat": {"rolled_back": True}}, "acted_alerts": ["f@t"]})
    data, problem = state.load()
    assert problem is None
    assert data == {"version": STATE_VERSION, "routes": {"chat": {"rolled_back": True}}, "acted_alerts": ["f@t"]}
    text = (tmp_path / "state.json").read_text()
    assert text.endswith("\n") and json.loads(text) == data  # a file a human can read and diff


def test_a_save_leaves_only_the_state_file_behind(tmp_path):
    state = StateFile(str(tmp_path / "sub" / "state.json"))  # the directory is created
    for i in range(3):
        state.save({"routes": {}, "n": i})
    assert os.listdir(tmp_path / "sub") == ["state.json"]
    assert state.load()[0]["n"] == 2


def test_no_file_yet_is_an_empty_state_not_a_problem(tmp_path):
    assert StateFile(str(tmp_path / "state.json")).load() == ({}, None)


def test_without_a_path_nothing_is_read_or_written(tmp_path):
    state = StateFile(None)
    state.save({"routes": {"chat": {}}})
    assert state.load() == ({}, None)
    assert state.remove_stale_temp_files() == 0


def test_a_failed_write_keeps_the_old_file_whole_and_leaves_no_temp_file(tmp_path):
    state = StateFile(str(tmp_path / "state.json"))
    state.save({"routes": {"chat": {"weight": 10}}})
    before = (tmp_path / "state.json").read_text()
    with pytest.raises(TypeError):
        state.save({"routes": {"chat": {"weight": object()}}})  # fails half-way through writing
    assert (tmp_path / "state.json").read_text() == before
    assert os.listdir(tmp_path) == ["state.json"]


@pytest.mark.parametrize("content, problem", [
    ("{half a file", "Expecting"),
    ('{"version": 99, "routes": {}}', f"version {STATE_VERSION}"),
    ('["a", "list"]', f"version {STATE_VERSION}"),
    ('{"version": 1, "routes": []}', f"version {STATE_VERSION}"),
])
def test_a_corrupt_file_is_moved_aside_with_its_content_and_the_reason_returned(tmp_path, caplog, content, problem):
    (tmp_path / "state.json").write_text(content)
    state = StateFile(str(tmp_path / "state.json"))
    data, why = state.load()
    assert data == {} and problem in why
    aside = list(tmp_path.glob("state.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == content  # kept for someone to look at
    assert not (tmp_path / "state.json").exists()
    assert "IS CORRUPT" in caplog.text and "NOT in effect" in caplog.text
    assert state.load() == ({}, None)  # the next start begins afresh


def test_content_the_caller_cannot_trust_is_moved_aside_too(tmp_path):
    state = StateFile(str(tmp_path / "state.json"))
    state.save({"routes": {"chat": {"weight": 500}}})

    def validate(data):
        raise ValueError("routes.chat.weight is not a weight between 0 and 100")

    data, why = state.load(validate)
    assert data == {} and "routes.chat.weight" in why
    assert len(list(tmp_path.glob("state.json.corrupt-*"))) == 1


def test_stale_temp_files_are_removed_and_nothing_else(tmp_path):
    keep = ["state.json", "state.json.bak", ".state.json", ".other.json.abc123", "notes.txt",
            "state.json.corrupt-1700000000"]
    stale = [".state.json.abc123", ".state.json.x_9"]
    for name in keep + stale:
        (tmp_path / name).write_text("x")
    (tmp_path / ".state.json.adirectory").mkdir()  # not a file: left alone
    assert StateFile(str(tmp_path / "state.json")).remove_stale_temp_files() == 2
    assert sorted(os.listdir(tmp_path)) == sorted(keep + [".state.json.adirectory"])


def test_loading_removes_stale_temp_files_even_before_the_first_save(tmp_path):
    (tmp_path / ".state.json.k1ll3d").write_text('{"version": 1, "rou')
    assert StateFile(str(tmp_path / "state.json")).load() == ({}, None)
    assert os.listdir(tmp_path) == []


def test_a_missing_directory_has_no_temp_files_to_remove(tmp_path):
    assert StateFile(str(tmp_path / "nowhere" / "state.json")).remove_stale_temp_files() == 0
