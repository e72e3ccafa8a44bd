"""Config fields are the one source: validation, the CLI's flags, the page's controls and the
README's table all come from the fields' help, choices and bounds, and this test fails on drift."""

from pathlib import Path

import pytest

from pruner.options import Range, check, markdown_table, options
from pruner.prune import MAX_SHARE, PruneConfig

README = Path(__file__).resolve().parent.parent / "README.md"


def test_bounds_and_choices_are_checked_from_the_fields():
    assert Range(0.0, 1.0, hi_closed=False).contains(0.0) and not Range(0.0, 1.0, hi_closed=False).contains(1.0)
    assert Range(0.0, MAX_SHARE, lo_closed=False, hi_closed=False).text() == "in (0, 0.95)"
    assert Range(1, None).text() == ">= 1"
    check(PruneConfig())
    for bad, message in ((dict(ratio=1.0), "ratio must be in [0, 1), got 1.0"),
                         (dict(target_params=0.95), "target_params must be in (0, 0.95), got 0.95"),
                         (dict(scope="world"), "scope must be one of ('local', 'global'), got 'world'"),
                         (dict(round_to=0), "round_to must be >= 1, got 0")):
        with pytest.raises(ValueError) as err:
            PruneConfig(**bad).validate(4)
        assert str(err.value) == message


def test_the_cli_flags_are_the_fields():
    from pruner.__main__ import PRUNE_FLAGS, build_parser

    prune = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "prune")[1]
    actions = {a.dest: a for a in prune._actions}
    for name in ["ratio", "target_params", *PRUNE_FLAGS]:
        opt = options(PruneConfig)[name]
        action = actions[opt.dest]
        assert action.help.startswith(opt.info()), name
        assert tuple(action.choices or ()) == tuple(opt.choices or ()), name
        assert action.default is None          # the preset decides unless the flag is given
        assert opt.flag in action.option_strings


def test_the_readme_table_is_generated_from_the_fields():
    text = README.read_text()
    assert markdown_table(PruneConfig) in text


def test_the_prune_tab_controls_are_the_fields():
    import app
    from components import controls
    from pruner.recipes import RECIPES

    bound = [(c, controls.BOUND[id(c)]) for c in app.demo.blocks.values() if id(c) in controls.BOUND]
    names = {name for _, (_, name) in bound}
    assert {"strategy", "scope", "attn_granularity", "attn_share", "compensate", "recompute_means",
            "allocation", "iterative_steps"} <= names
    start = RECIPES["default"][1]
    for component, (cls, name) in bound:
        opt = options(cls)[name]
        assert component.label == opt.label
        assert component.value == getattr(start, name)
        if opt.choices:
            assert [value for _, value in component.choices] == list(opt.choices)
        if opt.bounds is not None and opt.bounds.lo is not None:
            assert component.minimum >= opt.bounds.lo
            assert opt.bounds.hi is None or component.maximum <= opt.bounds.hi
