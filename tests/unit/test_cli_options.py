"""A command's flags arrive as typed groups: frozen dataclasses built once from click's parameters, each
flag in exactly one group, and a group whose options and fields differ refused when it is declared."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import click
import pytest
from click.testing import CliRunner

from vlmbatch.producer.cli.asked_options import AskedOptions
from vlmbatch.producer.cli.engine_options import EngineOptions
from vlmbatch.producer.cli.options import group_of, option_group
from vlmbatch.producer.cli.run_options import OutputOptions, RunOptions, SamplingOptions
from vlmbatch.producer.cli.source_options import SourceOptions
from vlmbatch.producer.cli.submit import DryRunOptions, run_command, submit_command


@dataclass(frozen=True)
class _Pair:
    left: int
    right: str | None


def test_a_command_gets_its_flags_as_one_frozen_group_beside_its_own_parameters() -> None:
    seen: dict[str, Any] = {}
    pair = option_group("pair", _Pair, [click.option("--left", type=int, default=1), click.option("--right")])

    @click.command()
    @click.argument("name")
    @pair
    @click.option("--loose", is_flag=True)
    def command(name: str, pair: _Pair, loose: bool) -> None:
        seen.update(name=name, pair=pair, loose=loose)

    result = CliRunner().invoke(command, ["n", "--left", "7", "--loose"])
    assert result.exit_code == 0, result.output
    assert seen == {"name": "n", "pair": _Pair(left=7, right=None), "loose": True}
    with pytest.raises(dataclasses.FrozenInstanceError):
        seen["pair"].left = 8  # type: ignore[misc]


def test_a_group_whose_options_are_not_its_fields_is_refused_where_it_is_declared() -> None:
    mismatched = option_group("pair", _Pair, [click.option("--left", type=int), click.option("--wrong")])
    with pytest.raises(TypeError, match="_Pair"):

        @mismatched
        def command(pair: _Pair) -> None: ...


@pytest.mark.parametrize(
    ("command", "groups"),
    [
        (submit_command, (AskedOptions, SourceOptions, RunOptions, SamplingOptions, OutputOptions, DryRunOptions)),
        (
            run_command,
            (AskedOptions, SourceOptions, RunOptions, SamplingOptions, OutputOptions, EngineOptions, DryRunOptions),
        ),
    ],
)
def test_every_flag_of_submit_and_run_is_in_exactly_one_group(command: click.Command, groups: tuple[type, ...]) -> None:
    flags = [p.name for p in command.params if isinstance(p, click.Option) and p.name != "help"]
    fields = [f.name for group in groups for f in dataclasses.fields(group)]
    loose = {"verbose", "progress_every"} if command is run_command else set()
    assert sorted(fields) == sorted(set(flags) - loose)
    params = command.make_context(command.name or "", ["src", "-q", "What?", "--max-tokens", "9"]).params
    assert group_of(AskedOptions, params).question == ("What?",)
    assert group_of(SamplingOptions, params).max_tokens == 9
