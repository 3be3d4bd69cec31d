"""The CLI's flags come from the config dataclasses: one default each, the field's docstring as help, and a
flag not given leaves the shipped preset untouched."""

import dataclasses

import pytest

from experiments.cli import _fit_config, _job_config, build_parser
from toolkit import SHIPPED, FitConfig, SelectConfig
from toolkit.adversarial import PGDConfig
from toolkit.config import EraseConfig, field_docs
from toolkit.data.splits import PeopleSplit
from toolkit.nullspace import FixedRatio


def parse(*argv):
    return build_parser().parse_args(list(argv))


def test_every_config_field_is_documented():
    for cls in (FitConfig, SelectConfig, EraseConfig, PGDConfig, PeopleSplit):
        docs = field_docs(cls)  # raises on a field without a docstring
        assert set(docs) == {f.name for f in dataclasses.fields(cls)} and all(len(d) > 10 for d in docs.values())


def test_no_flag_given_is_the_shipped_preset():
    assert _job_config(parse("erase", "--forget", "f.jsonl")) == SHIPPED
    assert _job_config(parse("demo")) == SHIPPED
    assert _fit_config(parse("fit"), FitConfig()) == FitConfig()


def test_flags_change_only_their_field():
    args = parse("erase", "--forget", "f.jsonl", "--retain-budget", "all", "--lams", "2,4", "--latch", "off,on",
                 "--pgd-steps", "0", "--rank", "ratio:0.5", "--layers", "3-5", "--select-positions", "own,prompt",
                 "--people-seed", "2", "--batch-size", "8", "--in-fit-people", "0")
    job = _job_config(args)
    assert job.fit == dataclasses.replace(SHIPPED.fit, retain_budget=None, pgd=None, rank_policy=FixedRatio(0.5),
                                          layers=(3, 4, 5), people=PeopleSplit(seed=2))
    assert job.select == dataclasses.replace(SHIPPED.select, lams=(2.0, 4.0), latch=(False, True),
                                             positions=(None, "prompt"), batch_size=8)
    assert (job.batch_size, job.in_fit_people) == (8, 0)  # the rehearsal's and the evaluation's batch
    assert _job_config(parse("demo", "--all-people")).people is None
    steps = _fit_config(parse("fit", "--pgd-steps", "5", "--eps", "0.1"), FitConfig()).pgd
    assert steps == PGDConfig(steps=5, eps=0.1)


def test_help_is_the_field_docstring_with_the_default_it_runs():
    erase = build_parser()._subparsers._group_actions[0].choices["erase"]
    helps = {a.option_strings[0]: a.help for a in erase._actions if a.option_strings}
    assert helps["--retain-budget"].startswith(field_docs(FitConfig)["retain_budget"].split(" (")[0][:40])
    assert helps["--retain-budget"].endswith("(default: 800)")
    assert helps["--gates"].endswith("(default: prototype_whitened,prototype,logistic,linear)")
    assert helps["--rank"].endswith("(default: ratio:0.97)") and helps["--pgd-steps"].endswith("(default: 10)")
    assert helps["--latch"].endswith("(default: off)")
    fit = build_parser()._subparsers._group_actions[0].choices["fit"]
    helps = {a.option_strings[0]: a.help for a in fit._actions if a.option_strings}
    assert helps["--rank"].endswith("(default: ratio:0.3)") and helps["--pgd-steps"].endswith("(default: 30)")


def test_a_rank_policy_is_written_as_it_is_read():
    from toolkit.nullspace import EnergyBudget, RelativeTolerance, format_rank_policy, parse_rank_policy

    for policy in (FixedRatio(0.97), EnergyBudget(0.01), RelativeTolerance(0.001)):
        assert parse_rank_policy(format_rank_policy(policy)) == policy
    assert format_rank_policy(FixedRatio(0.3)) == "ratio:0.3"


def test_a_bad_value_is_one_line(capsys):
    from experiments.cli import main

    with pytest.raises(SystemExit):
        main(["erase", "--forget", "f.jsonl", "--rank", "ratio"])
    assert "expected ratio:RHO" in capsys.readouterr().err
    assert main(["erase", "--forget", "f.jsonl", "--gates", "prototype,nope"]) == 2
    assert "Unknown gate kind(s) ['nope']" in capsys.readouterr().err
