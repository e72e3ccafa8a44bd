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
    for bad, message in ((dict(amount=1.0, unit="groups"), "amount must be in [0, 1), got 1.0"),
                         (dict(amount=0.95), "amount must be in (0, 0.95) for a share of parameters, got 0.95"),
                         (dict(unit="layers"), "unit must be one of ('parameters', 'groups'), got 'layers'"),
                         (dict(scope="world"), "scope must be one of ('local', 'global'), got 'world'"),
                         (dict(round_to=0), "round_to must be >= 1, got 0")):
        with pytest.raises(ValueError) as err:
            PruneConfig(**bad).validate(4)
        assert str(err.value) == message


@pytest.mark.parametrize("command", ["prune", "recover"])
def test_the_cli_flags_are_the_fields(command):
    from pruner.__main__ import PRUNE_FLAGS, RECOVER_FLAGS, build_parser
    from pruner.recover import LoraSettings

    parser = build_parser()._subparsers._group_actions[0].choices[command]
    actions = {flag: a for a in parser._actions for flag in a.option_strings}
    cls, names = (PruneConfig, PRUNE_FLAGS) if command == "prune" \
        else (LoraSettings, RECOVER_FLAGS)
    for name in names:
        opt = options(cls)[name]
        action = actions[opt.flag]
        assert action.dest == opt.dest
        assert action.help.replace("%%", "%").startswith(opt.info()), name
        assert tuple(action.choices or ()) == tuple(opt.choices or ()), name
        assert action.default is None          # the preset decides unless the flag is given
    if command == "prune":      # the amount and its unit in one flag
        args = parser.parse_args(["--ratio", "0.3"])
        assert (args.amount, args.unit) == (0.3, "groups")
        args = parser.parse_args(["--target-params", "0.25"])
        assert (args.amount, args.unit) == (0.25, "parameters")


def test_the_readme_table_is_generated_from_the_fields():
    from pruner.__main__ import RECOVER_FLAGS
    from pruner.recover import LoraSettings

    import app

    text = README.read_text()
    assert markdown_table(PruneConfig) in text
    assert markdown_table(LoraSettings, RECOVER_FLAGS) in text
    assert app.api_table(app.demo) in text          # every endpoint, its keyword arguments and defaults


def test_the_prune_tab_controls_are_the_fields():
    import app
    from components import controls
    from pruner.recipes import RECIPES

    bound = [(c, controls.BOUND[id(c)]) for c in app.demo.blocks.values() if id(c) in controls.BOUND]
    names = {name for _, (_, name) in bound}
    assert {"strategy", "scope", "attn_granularity", "attn_share", "compensate", "recompute_means",
            "allocation", "iterative_steps"} <= names
    from pruner.recover import PRESETS, LoraSettings

    assert {"max_steps", "distill_weight"} <= names
    from pruner.importance import CRITERIA, ScoreConfig

    assert {"criterion", "aggregation"} <= names
    from pruner.data import CalibrationSpec

    start = {ScoreConfig: RECIPES["default"][0], PruneConfig: RECIPES["default"][1], LoraSettings: PRESETS["quick"],
             CalibrationSpec: CalibrationSpec()}
    for component, (cls, name) in bound:
        opt = options(cls)[name]
        assert component.label == opt.label
        assert component.value == getattr(start[cls], name)
        if name == "max_steps":         # every preset's steps can be asked for on the page
            assert component.maximum >= max(p.max_steps for p in PRESETS.values())
        if opt.choices:       # the criterion dropdown leaves the aliases out
            values = [value for _, value in component.choices]
            assert values == (list(CRITERIA) if name == "criterion" else list(opt.choices))
        if opt.bounds is not None and opt.bounds.lo is not None:
            assert component.minimum >= opt.bounds.lo
            assert opt.bounds.hi is None or component.maximum <= opt.bounds.hi
