"""Every recipe and every ``oddsparse`` subcommand answers ``--help`` (argparse %-formats help strings,
so a bare ``%`` in a field comment, such as "about 80% train", used to crash it)."""
from __future__ import annotations

import contextlib
import io

import pytest

from recipe_loader import load_recipe

RECIPES = ("train_partsad", "train_toysad", "sweep_variants", "report_boxes", "report_baselines",
           "report_stage1", "majority_vote", "report_registration", "report_resolution",
           "report_oracle_matcher", "report_perceptibility", "report_refresh", "report_gt_boxes")


def _help_text(main, argv) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code in (0, None)
    return out.getvalue()


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_help(name):
    text = _help_text(load_recipe(name).main, ["--help"])
    assert "usage:" in text


def test_train_recipe_help_lists_every_field_with_its_comment():
    module = load_recipe("train_partsad")
    text = " ".join(_help_text(module.main, ["--help"]).split())
    assert "about 80% train" in text  # the comment with the percent sign, unformatted
    for field in module.dataclasses.fields(module.Config):
        assert f"--{field.name}" in text


@pytest.mark.parametrize("command", ["generate", "show", "eval", "predict", "compare"])
def test_cli_help(command):
    from oddsparse import cli

    assert command in cli.SUBCOMMANDS
    assert "usage:" in _help_text(cli.main, [command, "--help"])
