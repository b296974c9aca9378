"""``make smoke``'s command line (``make bench-step`` takes the same recipe names)."""

import pytest

from recipe.smoke import parse_args


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
