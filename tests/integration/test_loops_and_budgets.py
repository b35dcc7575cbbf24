"""Loops stopped early and thinking budgets, through the commands a user types (the fake engine loops on
questions that hold its marker, as a reasoning model does at times): a stopped loop ends `truncated` with
finish `repetition`, is counted by `stats`, exported as the OpenAI `length` with vlmbatch's own kind beside
it, and can be resubmitted; a capped trace answers, succeeds and is counted apart from truncation. The real
engine's side is tests/engine/test_vllm_loops.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.fixtures.bad_images import good_jpeg
from tests.processes import vlmbatch, vlmbatch_json

LOOP = "LOOPS"


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMBATCH_")}
    env.update(VLMBATCH_ENGINE="fake", VLMBATCH_FAKE_LOOP_MARKER=LOOP, VLMBATCH_HOME=str(tmp_path / "home"))
    return env


def _ok(args: list[str], env: dict[str, str]) -> None:
    done = vlmbatch(args, env)
    assert done.returncode == 0, done.stderr[-2000:]


def _folder(path: Path, count: int) -> Path:
    path.mkdir()
    for i in range(count):
        (path / f"{i:02d}.jpg").write_bytes(good_jpeg(40, 30, seed=i))
    return path


def test_a_stopped_loop_is_truncated_repetition_counted_exported_and_resubmittable(tmp_path: Path) -> None:
    env = _env(tmp_path)
    folder = _folder(tmp_path / "imgs", 3)
    questions = ["-q", f"{LOOP}: count the dots.", "-q", "What is shown?"]
    status = vlmbatch_json(
        [
            "run",
            str(folder),
            *questions,
            "--repetition-detection",
            "reasoning",
            "--max-tokens",
            "4000",
            "--run",
            "r",
            "--json",
        ],
        env,
    )
    assert isinstance(status, dict)
    assert (status["counts"]["truncated"], status["counts"]["succeeded"]) == (3, 3)

    stats = vlmbatch_json(["stats", "r", "--json"], env)
    assert isinstance(stats, dict)
    assert stats["truncation"]["by_finish"] == {"length": 0, "context": 0, "repetition": 3}
    assert (stats["truncation"]["samples"], stats["truncation"]["jobs"]) == (3, 3)

    out = tmp_path / "out.jsonl"
    _ok(["export", "r", "--format", "jsonl", "--status", "truncated", "--out", str(out)], env)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    # The preset's smallest period that the fake's 20-word phrase fills is 20 words, stopped at 4 copies.
    assert [(r["finish_reason"], r["completion_tokens"], r["state"]) for r in records] == [
        ("repetition", 80, "truncated")
    ] * 3
    openai = tmp_path / "batch.jsonl"
    _ok(["export", "r", "--format", "openai", "--out", str(openai)], env)
    choices = [json.loads(line)["response"]["body"]["choices"][0] for line in openai.read_text().splitlines()]
    kinds = sorted((c["finish_reason"], c["vlmbatch_finish_reason"]) for c in choices)
    assert kinds == [("length", "repetition")] * 3 + [("stop", "stop")] * 3

    # A loop would loop again if continued: left out, unless regenerated from token 0 (--restart).
    kept = vlmbatch_json(["resubmit", "r", "--status", "truncated", "--json"], env)
    assert isinstance(kept, dict) and kept["resubmitted"] == 0
    assert [(row["error_type"], row["jobs"]) for row in kept["left_out"]] == [("repetition", 3)]
    again = vlmbatch_json(["resubmit", "r", "--status", "truncated", "--restart", "--json"], env)
    assert isinstance(again, dict) and again["resubmitted"] == 3


def test_without_detection_a_loop_runs_to_max_tokens_and_a_context_stop_is_told_apart(tmp_path: Path) -> None:
    env = _env(tmp_path)
    folder = _folder(tmp_path / "imgs", 2)
    vlmbatch_json(["run", str(folder), "-q", f"{LOOP} forever", "--max-tokens", "300", "--run", "plain", "--json"], env)
    stats = vlmbatch_json(["stats", "plain", "--json"], env)
    assert isinstance(stats, dict)
    assert stats["truncation"]["by_finish"] == {"length": 2, "context": 0, "repetition": 0}
    # Continuing a `length` truncation needs a larger budget, said in one line before anything changes.
    refused = vlmbatch(["resubmit", "plain", "--status", "truncated"], env)
    assert refused.returncode == 2 and "--max-tokens" in refused.stderr and "Traceback" not in refused.stderr
    # A context of 600 tokens: the fake's prompt (a 256-token tile and the question) leaves ~340 of 4000.
    vlmbatch_json(
        [
            "run",
            str(folder),
            "-q",
            f"{LOOP} again",
            "--max-tokens",
            "4000",
            "--max-model-len",
            "600",
            "--run",
            "ctx",
            "--json",
        ],
        env,
    )
    stats = vlmbatch_json(["stats", "ctx", "--json"], env)
    assert isinstance(stats, dict)
    assert stats["truncation"]["by_finish"] == {"length": 0, "context": 2, "repetition": 0}
    # More tokens cannot fit the context: listed, not resubmitted, whatever the budget.
    again = vlmbatch_json(["resubmit", "ctx", "--status", "truncated", "--max-tokens", "8000", "--json"], env)
    assert isinstance(again, dict) and again["resubmitted"] == 0
    assert [(row["error_type"], row["jobs"]) for row in again["left_out"]] == [("context", 2)]


def test_a_capped_thinking_budget_answers_succeeds_and_is_counted_apart(tmp_path: Path) -> None:
    env = _env(tmp_path)
    env["VLMBATCH_FAKE_TRACE_TOKENS"] = "50"
    folder = _folder(tmp_path / "imgs", 2)
    status = vlmbatch_json(["run", str(folder), "-q", "Why?", "--thinking-budget", "20", "--run", "b", "--json"], env)
    assert isinstance(status, dict) and status["counts"]["succeeded"] == 2
    stats = vlmbatch_json(["stats", "b", "--json"], env)
    assert isinstance(stats, dict)
    assert stats["thinking_capped"] == {"samples": 2, "jobs": 2}
    assert stats["truncation"]["samples"] == 0
    out = tmp_path / "out.jsonl"
    _ok(["export", "b", "--format", "jsonl", "--out", str(out)], env)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["thinking_capped"] and r["answer"] and r["reasoning_tokens"] == 20 for r in records)


def _line(custom_id: str, text: str, **body: object) -> str:
    message = {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": "00.jpg"}}, {"type": "text", "text": text}],
    }
    return json.dumps({"custom_id": custom_id, "body": {"messages": [message], **body}})


def test_an_openai_batch_line_sets_vllms_fields_for_its_own_job(tmp_path: Path) -> None:
    env = _env(tmp_path)
    env["VLMBATCH_FAKE_TRACE_TOKENS"] = "50"
    folder = _folder(tmp_path / "batch", 1)
    lines = [
        _line(
            "loop", f"{LOOP} now", repetition_detection={"max_pattern_size": 40, "min_pattern_size": 20, "min_count": 2}
        ),
        _line("budget", "Why?", thinking_token_budget=10),
        _line("plain", "Why not?"),
    ]
    (folder / "requests.jsonl").write_text("\n".join(lines) + "\n")
    vlmbatch_json(["run", str(folder / "requests.jsonl"), "--run", "batch", "--json"], env)
    out = tmp_path / "out.jsonl"
    _ok(["export", "batch", "--format", "jsonl", "--status", "succeeded,truncated", "--out", str(out)], env)
    by_id = {r["metadata"]["custom_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert (by_id["loop"]["finish_reason"], by_id["loop"]["completion_tokens"]) == ("repetition", 40)
    assert (by_id["budget"]["thinking_capped"], by_id["budget"]["reasoning_tokens"]) == (True, 10)
    assert (by_id["plain"]["finish_reason"], by_id["plain"]["thinking_capped"]) == ("stop", None)


def test_a_batch_line_with_an_invalid_repetition_detection_is_rejected_with_its_reason(tmp_path: Path) -> None:
    env = _env(tmp_path)
    folder = _folder(tmp_path / "batch", 1)
    bad = _line("bad", "Why?", repetition_detection={"max_pattern_size": 4, "min_count": 1})
    (folder / "requests.jsonl").write_text(_line("good", "Why?") + "\n" + bad + "\n")
    result = vlmbatch(["submit", str(folder / "requests.jsonl"), "--json"], env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "line 2: `repetition_detection`" in result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["submitted"] == 1
