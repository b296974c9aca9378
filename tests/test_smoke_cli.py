"""``make smoke``'s command line (``make bench-step`` takes the same recipe names), and how it reads a run's steps."""

import pytest

from recipe.smoke import logged_steps, parse_args


def test_no_recipe_named_runs_both():
    assert parse_args([]).recipes == ["samr1", "veteran"]


def test_one_recipe_named_runs_it_alone():
    assert parse_args(["veteran", "--steps", "4"]).recipes == ["veteran"]


def test_an_unknown_recipe_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(["samr2"])
    assert "invalid recipe 'samr2'" in capsys.readouterr().err


def test_generalized_rows_are_in_unless_left_out():
    assert parse_args([]).generalized is True
    assert parse_args(["samr1", "--no-generalized"]).generalized is False


def test_generalized_rows_make_the_steps_train_them(tmp_path):
    from recipe.smoke import recipe_overrides

    model = tmp_path / "model"
    assert "data.shuffle=false" in recipe_overrides("samr1", model, generalized=True)
    assert "data.shuffle=false" not in recipe_overrides("samr1", model)


def test_a_step_record_half_written_is_read_only_once_complete(tmp_path, monkeypatch):
    """verl's file logger writes each step as one line; a reader polling a running launch can catch a write of more
    than a page half done (the learning test's killed run did, at byte 4096), and a kill can cut the last line."""
    from verl.utils.tracking import FileLogger

    path = tmp_path / "metrics" / "launch.jsonl"
    path.parent.mkdir()
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(path))
    logger = FileLogger("samrl", "run")
    metrics = {f"reward/component_{index}/mean": index / 7 for index in range(200)}  # a line longer than a page
    logger.log(metrics, step=1)
    logger.log(metrics, step=2)
    logger.finish()
    written = path.read_bytes()
    assert [step["step"] for step in logged_steps(tmp_path, set())] == [1, 2]
    for cut in (4096, written.index(b"\n") + 1 + 4096, len(written) - 1):
        path.write_bytes(written[:cut])
        assert [step["step"] for step in logged_steps(tmp_path, set())] == [1, 2][: written[:cut].count(b"\n")]
