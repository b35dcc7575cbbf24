"""Command-line cases of the third hardening round, as subprocesses with the fake engine."""

from __future__ import annotations

import base64
import io
import json
import os
import tarfile
from pathlib import Path

from tests.fixtures.bad_images import good_jpeg
from tests.processes import service_env, vlmbatch, vlmbatch_json


def _embedded_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMBATCH_")}
    env.update({"VLMBATCH_ENGINE": "fake", "VLMBATCH_HOME": str(home)})
    return env


def test_run_reads_the_images_it_staged_under_its_own_stage_to(tmp_path: Path) -> None:
    (tmp_path / "source").mkdir()
    manifest = tmp_path / "source" / "inline.jsonl"  # its folder is readable anyway; the stage is not in it
    lines = []
    for i in range(3):
        uri = "data:image/jpeg;base64," + base64.b64encode(good_jpeg(32, 24, seed=i)).decode()
        lines.append(json.dumps({"image": uri, "question": f"What is in picture {i}?"}))
    manifest.write_text("\n".join(lines) + "\n")
    elsewhere = tmp_path / "stage-elsewhere"
    command = ["run", str(manifest), "--stage-to", str(elsewhere), "--json"]
    status = vlmbatch_json(command, _embedded_env(tmp_path / "home"))
    assert isinstance(status, dict)
    assert status["counts"]["succeeded"] == 3, status
    assert any(p.is_file() for p in elsewhere.rglob("*"))


def _mistakes(tmp: Path, redis_url: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Each user mistake: its command line and the environment it adds."""
    images = tmp / "imgs"
    images.mkdir()
    (images / "a.jpg").write_bytes(good_jpeg(16, 16, seed=1))
    (tmp / "a-file").write_text("not a folder")
    (tmp / "keys.txt").write_text("# comments only\n\n")
    (tmp / "loop.j2").write_text("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}x")
    (tmp / "huge.j2").write_text("{{ 'a' * 10**11 }}")
    (tmp / "deep.jsonl").write_text('{"image": "imgs/a.jpg", "q": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    bad_id = '{"custom_id": "x\\ud800", "body": {"messages": [{"role": "user", "content": "hi"}]}}\n'
    (tmp / "surrogate.jsonl").write_text(bad_id)
    with tarfile.open(tmp / "deep.tar", "w") as shard:
        for name, data in (("s1.jpg", good_jpeg(16, 16, seed=3)), ("s1.json", b"[" * 200_000 + b"]" * 200_000)):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            shard.addfile(member, io.BytesIO(data))
    submit = ["submit", str(images), "--question", "What?"]
    return {
        "WebDataset .json nested 200,000 deep": (["submit", str(tmp / "deep.tar"), "--question", "What?"], {}),
        "engine args that are no JSON": (submit, {"VLMBATCH_ENGINE_ARGS": "{bad"}),
        "a MySQL database URL": (submit, {"VLMBATCH_DATABASE_URL": "mysql://u@127.0.0.1/db"}),
        "a broker URL with no port number": (submit, {"VLMBATCH_BROKER_URL": "redis://:notaport"}),
        "a Redis database index the server lacks": (
            submit,
            {"VLMBATCH_BROKER_URL": redis_url.rsplit("/", 1)[0] + "/99", "VLMBATCH_DATABASE_URL": ""},
        ),
        "a home that is a file": (submit, {"VLMBATCH_HOME": str(tmp / "a-file")}),
        "an export to an unwritable place": (["export", "1", "--out", "/proc/x.jsonl"], {}),
        "a smoke model in an unwritable place": (["smoke-model", "/proc/x"], {}),
        "a manifest nested 100,000 deep": (["submit", str(tmp / "deep.jsonl"), "--question", "What?"], {}),
        "a lone surrogate in a custom_id": (["submit", str(tmp / "surrogate.jsonl")], {}),
        "an endless template": (["submit", str(images), "--prompt-template", str(tmp / "loop.j2")], {}),
        "a template of 10^11 characters": (["submit", str(images), "--prompt-template", str(tmp / "huge.j2")], {}),
        "a batch id as a run name": ([*submit, "--run", "batch_1"], {}),
        "an empty queue": ([*submit, "--queue", ""], {}),
        "empty choices": ([*submit, "--choices", ""], {}),
        "a model folder that does not exist": (
            ["run", str(images), "--question", "What?", "--engine", "vllm", "--model", "/nonexistent/model"],
            {},
        ),
        "a keys file with no key": (["serve", "--port", "0"], {"VLMBATCH_API_KEYS_FILE": str(tmp / "keys.txt")}),
    }


def test_user_mistakes_are_one_line_and_exit_2_before_anything_is_submitted(tmp_path: Path, redis_url: str) -> None:
    home = tmp_path / "home"
    for mistake, (args, extra) in _mistakes(tmp_path, redis_url).items():
        env = {**_embedded_env(home), **extra}
        done = vlmbatch(args, env, timeout=120)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (mistake, done.stderr)
    listed = vlmbatch(["status", "--json"], _embedded_env(home))
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stdout  # no run was made


def test_metadata_postgresql_cannot_store_is_a_malformed_row(
    tmp_path: Path, postgres_url: str, redis_url: str, queue_name: str
) -> None:
    (tmp_path / "a.jpg").write_bytes(good_jpeg(16, 16, seed=2))
    manifest = tmp_path / "meta.jsonl"
    manifest.write_text(
        '{"image": "a.jpg", "question": "What?", "score": NaN}\n'
        '{"image": "a.jpg", "question": "Where?", "note": "nul \\u0000 here"}\n'
        '{"image": "a.jpg", "question": "Who?", "ok": 1.5}\n'
    )
    env = service_env(database_url=postgres_url, broker_url=redis_url, queue=queue_name)
    strict = vlmbatch(["submit", str(manifest), "--strict"], env)
    assert strict.returncode == 2 and "Traceback" not in strict.stderr, strict.stderr
    assert "2 malformed row(s)" in strict.stderr and "NaN" in strict.stderr and "NUL" in strict.stderr
    assert json.loads(vlmbatch(["status", "--json"], env).stdout) == []  # nothing written
    done = vlmbatch(["submit", str(manifest), "--json"], env)  # by default the two are the run's rejects
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert json.loads(done.stdout)["submitted"] == 1 and "2 row(s) rejected" in done.stderr
