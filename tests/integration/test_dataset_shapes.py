"""Rows as datasets write them: MMMU's `<image 1>` in the question while `<image 2>` sits in its options,
ViRL's one `<image>` for two images (the images no placeholder places go before the text, counted in the
report), text-only requests among image ones, and an OpenAI batch file on S3 whose first line is broken.
`vlmbatch run` with the fake engine, as a user types it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import fill_bucket
from tests.fixtures.bad_images import good_jpeg
from tests.processes import vlmbatch
from vlmbatch.media.stores import ObjectStores
from vlmbatch.producer.sources.open import open_source
from vlmbatch.producer.sources.openai_batch import OpenAIBatchSource


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"VLMBATCH_ENGINE": "fake", "VLMBATCH_HOME": str(tmp_path / "home"), **extra}


def _run(tmp_path: Path, source: Path | str, *args: str, **env: str) -> tuple[dict[str, object], str]:
    done = vlmbatch(["run", str(source), *args, "--json"], _env(tmp_path, **env))
    assert done.returncode == 0, done.stderr[-2000:]
    status = json.loads(done.stdout.strip().splitlines()[-1])
    assert isinstance(status, dict)
    return status, done.stderr


def _exported(tmp_path: Path, run: object) -> list[dict[str, object]]:
    out = tmp_path / "out.jsonl"
    done = vlmbatch(["export", str(run), "--out", str(out)], _env(tmp_path))
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_placeholders_as_mmmu_and_virl_write_them_and_a_text_only_row(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.jpg").write_bytes(good_jpeg(30, 20, seed=ord(name)))
    rows = [
        # MMMU: the question places image 1; image 2 is named only in the options (metadata).
        {"image": ["a.jpg", "b.jpg"], "question": "Which is <image 1>?", "options": "['<image 2>', 'x']"},
        # ViRL: one `<image>` for two images.
        {"image": ["b.jpg", "c.jpg"], "question": "<image>\nAre these the same?"},
        # A text-only request.
        {"question": "What is 2 + 2?"},
        # A placeholder naming an image the row does not have: the one row error.
        {"image": ["a.jpg"], "question": "Compare <image 1> with <image 2>."},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    status, stderr = _run(tmp_path, manifest)
    assert (status["total"], status["counts"]["succeeded"], status["rejected"]) == (3, 3, 1)  # type: ignore[index]
    assert "2 row(s) place fewer images than they have" in stderr
    assert "line 4: image placeholders: <image 2> names no image: the job has 1" in stderr
    by_question = {str(r["question"]): r for r in _exported(tmp_path, status["run"])}
    assert {q: len(r["images"]) for q, r in by_question.items()} == {  # type: ignore[arg-type]
        "Which is <image 1>?": 2,
        "<image>\nAre these the same?": 2,
        "What is 2 + 2?": 0,
    }
    assert by_question["What is 2 + 2?"]["answer"]


def test_a_text_only_openai_batch_line_among_image_lines_is_a_job(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(good_jpeg(30, 20))

    def line(custom_id: str, content: object) -> str:
        body = {"model": "m", "messages": [{"role": "user", "content": content}]}
        return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})

    image = {"type": "image_url", "image_url": {"url": "a.jpg"}}
    batch = tmp_path / "batch.jsonl"
    lines = [
        line("img", [image, {"type": "text", "text": "What is it?"}]),
        line("text", "Name a prime number."),
        line("parts", [{"type": "text", "text": "Name an even number."}]),
    ]
    batch.write_text("\n".join(lines) + "\n")
    status, _ = _run(tmp_path, batch)
    assert (status["total"], status["counts"]["succeeded"], status["rejected"]) == (3, 3, 0)  # type: ignore[index]


def test_an_openai_batch_file_on_s3_is_recognised_even_with_a_broken_first_line(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    def line(custom_id: str, url: str) -> str:
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is it?"}]
        body = {"model": "m", "messages": [{"role": "user", "content": content}]}
        return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})

    text = "\n".join(['{"custom_id": "broken", "body": {', line("a", "img/a.jpg"), line("b", "img/b.jpg")]) + "\n"
    objects = {"sets/batch.jsonl": text.encode()}
    objects |= {f"sets/img/{n}.jpg": good_jpeg(20, 20, seed=i) for i, n in enumerate("ab")}
    fill_bucket(s3_endpoint, s3_bucket, objects)
    uri = f"s3://{s3_bucket}/sets/batch.jsonl"
    source = open_source(uri, stores=ObjectStores(s3_endpoint_url=s3_endpoint))
    assert isinstance(source, OpenAIBatchSource)
    env = {"VLMBATCH_S3_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    status, stderr = _run(tmp_path, uri, **env)
    assert (status["total"], status["counts"]["succeeded"], status["rejected"]) == (2, 2, 1)  # type: ignore[index]
    assert "line 1: invalid JSON" in stderr
    images = sorted(str(r["images"]) for r in _exported(tmp_path, status["run"]))
    assert images == [f"['s3://{s3_bucket}/sets/img/a.jpg']", f"['s3://{s3_bucket}/sets/img/b.jpg']"]
