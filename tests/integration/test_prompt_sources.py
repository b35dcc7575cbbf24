"""What each job asks, as submitted on both databases: templates over a row's columns, several questions
per image, per-row sampling columns, and OpenAI batch files (refused whole when a line is bad)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.fixtures.bad_images import good_jpeg, good_png
from vlmbatch.media.stores import ObjectStores
from vlmbatch.producer.sources.open import open_source
from vlmbatch.producer.sources.prompts import Prompting, PromptTemplate
from vlmbatch.producer.submit import submit
from vlmbatch.schema.contracts.errors import SourceError
from vlmbatch.schema.contracts.models import RunSettings
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.schema.ledger.tables import Job, Run
from vlmbatch.worker.transport.publisher import NullPublisher

MMMU_TEMPLATE = "{{ question }}\n{{ options | options }}\nAnswer with the option's letter."


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def _submit_source(database_url: str, source: object) -> list[Job]:
    _, sessions = open_ledger(database_url)
    report = submit(
        sessions=sessions,
        publisher=NullPublisher(),
        source=source,  # type: ignore[arg-type]
        settings=RunSettings(model="m"),
        queue="q",
        run_name="r",
    )
    with sessions() as session:
        return list(session.scalars(select(Job).where(Job.run_id == report.run).order_by(Job.id)))


def _runs(database_url: str) -> int:
    _, sessions = open_ledger(database_url)
    with sessions() as session:
        return len(session.scalars(select(Run)).all())


def test_an_mmmu_row_set_renders_through_the_template_and_the_job_stores_the_rendered_prompt(
    database_url: str, tmp_path: Path
) -> None:
    manifest = _jsonl(
        tmp_path / "mmmu.jsonl",
        [
            {
                "image": ["a.png", "b.png"],
                "question": "Which of <image 1> and <image 2> shows a circuit?",
                "options": "['<image 1>', '<image 2>', 'neither']",
                "subject": "Electronics",
            }
        ],
    )
    template = PromptTemplate(MMMU_TEMPLATE)
    (job,) = _submit_source(
        database_url,
        open_source(
            str(manifest),
            prompting=Prompting(template=template),
            stores=ObjectStores(),
        ),
    )
    assert job.question == (
        "Which of <image 1> and <image 2> shows a circuit?\nA. <image 1>\nB. <image 2>\nC. neither\n"
        "Answer with the option's letter."
    )
    assert job.meta == {"options": "['<image 1>', '<image 2>', 'neither']", "subject": "Electronics"}


def test_a_template_error_or_a_missing_column_refuses_the_submit_naming_the_row(
    database_url: str, tmp_path: Path
) -> None:
    manifest = _jsonl(
        tmp_path / "m.jsonl",
        [
            {"image": "a.png", "question": "q1", "options": ["x", "y"]},
            {"image": "b.png", "question": "q2"},
            {"image": "c.png", "question": "q3", "options": "not a list"},
            {"image": ["c.png", "d.png"], "question": "only <image 3>", "options": ["x"]},
        ],
    )
    source = open_source(
        str(manifest),
        prompting=Prompting(template=PromptTemplate(MMMU_TEMPLATE)),
        stores=ObjectStores(),
    )
    with pytest.raises(SourceError) as refused:
        _submit_source(database_url, source)
    message = refused.value.message
    assert "3 malformed row(s); nothing was submitted" in message
    assert "line 2: prompt template: 'options' is undefined" in message
    assert "line 3: prompt template: options 'not a list' are not a list" in message
    assert "line 4: image placeholders: <image 3> names no image: the job has 2" in message
    assert "line 1" not in message
    assert _runs(database_url) == 0


def test_several_questions_make_images_times_questions_jobs_with_an_images_jobs_adjacent(
    database_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(good_jpeg(seed=i))
    questions = ("Is there a person?", "Is it indoors?")
    jobs = _submit_source(
        database_url, open_source(str(folder), prompting=Prompting(questions=questions), stores=ObjectStores())
    )
    assert [(j.images[0].rsplit("/", 1)[-1], j.question) for j in jobs] == [
        (f"{i}.jpg", q) for i in range(3) for q in questions
    ]


def test_per_row_sampling_columns_are_kept_on_the_job_and_validated_like_the_flags(
    database_url: str, tmp_path: Path
) -> None:
    good = tmp_path / "m.csv"
    good.write_text("image,question,max_tokens,temperature,top_p,seed\na.jpg,q,64,0,,\nb.jpg,q,,,,\n")
    jobs = _submit_source(database_url, open_source(str(good), stores=ObjectStores()))
    assert [j.params for j in jobs] == [{"max_tokens": 64, "temperature": 0.0}, None]
    assert jobs[0].meta is None  # sampling columns are settings, not metadata
    bad = _jsonl(
        tmp_path / "bad.jsonl",
        [
            {"image": "a.jpg", "max_tokens": 0},
            {"image": "a.jpg", "top_p": 1.5},
            {"image": "a.jpg", "temperature": "hot"},
        ],
    )
    with pytest.raises(SourceError) as refused:
        _submit_source(database_url, open_source(str(bad), prompting=Prompting.of("q"), stores=ObjectStores()))
    message = refused.value.message
    assert "line 1: `max_tokens`: Input should be greater than or equal to 1" in message
    assert "line 2: `top_p`: Input should be less than or equal to 1" in message
    assert "line 3: `temperature`: Input should be a valid number" in message


def _data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _line(custom_id: str, content: list[dict[str, object]], **body: object) -> dict[str, object]:
    messages: list[dict[str, object]] = [{"role": "user", "content": content}]
    if "system" in body:
        messages.insert(0, {"role": "system", "content": body.pop("system")})
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o", "messages": messages, **body},
    }


def _image(url: str) -> dict[str, object]:
    return {"type": "image_url", "image_url": {"url": url}}


def _text(text: str) -> dict[str, object]:
    return {"type": "text", "text": text}


def test_an_openai_batch_file_becomes_one_job_per_line_with_data_images_staged_out_of_the_ledger(
    database_url: str, tmp_path: Path
) -> None:
    png = good_png(seed=1)
    schema = {"type": "object", "properties": {"count": {"type": "integer"}}, "required": ["count"]}
    batch = _jsonl(
        tmp_path / "batch.jsonl",
        [
            _line("req-1", [_image(_data_url(png)), _text("How many?")], system="Be brief.", max_tokens=64),
            _line(
                "req-2",
                [_text("Left:"), _image(_data_url(png)), _text("Right:"), _image("s3://bucket/r.jpg")],
                max_completion_tokens=32,
                temperature=0.2,
                n=2,
                response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
            ),
        ],
    )
    stage = tmp_path / "staged"
    jobs = _submit_source(database_url, open_source(str(batch), stores=ObjectStores(), stage_to=str(stage)))
    staged = sorted(p for p in stage.rglob("*") if p.is_file())
    assert len(staged) == 1 and staged[0].read_bytes() == png  # the same bytes are staged once
    first, second = jobs
    assert first.meta == {"custom_id": "req-1"} and second.meta == {"custom_id": "req-2"}
    assert first.images == [staged[0].as_uri()] and first.question == "How many?"
    assert first.params == {"system": "Be brief.", "max_tokens": 64}
    assert second.images == [staged[0].as_uri(), "s3://bucket/r.jpg"]
    assert second.question == "Left:\n<image>\nRight:\n<image>"
    assert second.params == {"max_tokens": 32, "temperature": 0.2, "samples": 2, "json_schema": schema}
    for job in jobs:
        assert "base64" not in json.dumps([job.images, job.question, job.meta, job.params])


def test_an_openai_batch_file_with_bad_lines_is_refused_whole_naming_every_bad_line(
    database_url: str, tmp_path: Path
) -> None:
    image = _image(_data_url(good_png()))
    lines: list[object] = [
        _line("a", [image, _text("ok")]),
        _line("a", [image, _text("the same id again")]),
        "{not json",
        _line("c", [_image("ftp://example.com/x.png"), _text("bad scheme")]),
        _line("d", [image, _text("x")], stop=["\n"]),
        _line("e", [_image("data:image/png;base64,***"), _text("x")]),
        _line("f", [image, _text("x")], max_tokens=0),
        {"custom_id": "g", "body": {"messages": [{"role": "assistant", "content": "hi"}]}},
        _line("h", [image, _text("fine")]),
    ]
    batch = _jsonl(tmp_path / "batch.jsonl", lines)
    source = open_source(str(batch), stores=ObjectStores(), stage_to=str(tmp_path / "staged"))
    with pytest.raises(SourceError) as refused:
        _submit_source(database_url, source)
    message = refused.value.message
    assert "7 malformed row(s); nothing was submitted" in message
    for expected in [
        "line 2: duplicate custom_id 'a'",
        "line 3: invalid JSON",
        "line 4: unsupported URI scheme",
        "line 5: unsupported body field(s): stop",
        "line 6: a data: URI whose base64 payload is invalid",
        "line 7: `max_tokens`: Input should be greater than or equal to 1",
        "line 8: role 'assistant' is not supported",
    ]:
        assert expected in message
    assert "line 1:" not in message and "line 9:" not in message
    assert _runs(database_url) == 0


def test_every_bad_line_is_named_even_past_the_detailed_ones(tmp_path: Path) -> None:
    image = _image(_data_url(good_png()))
    lines: list[object] = [_line(f"id-{i}", [image, _text("q")]) for i in range(40)]
    for bad in (*range(5, 30), 33, 35, 36):
        lines[bad] = "{broken"
    source = open_source(str(_jsonl(tmp_path / "b.jsonl", lines)), stores=ObjectStores(), stage_to=str(tmp_path))
    with pytest.raises(SourceError) as refused:
        source.validate()
    assert refused.value.message.endswith("… and 8 more; all of them: 6-30, 34, 36-37")


def test_a_question_or_template_with_an_openai_batch_file_is_refused(tmp_path: Path) -> None:
    batch = _jsonl(tmp_path / "b.jsonl", [_line("a", [_image("s3://b/x.jpg"), _text("q")])])
    with pytest.raises(SourceError, match="brings its own messages"):
        open_source(str(batch), prompting=Prompting.of("q"), stores=ObjectStores())


def test_a_batch_file_whose_first_line_is_broken_is_still_read_as_one_and_refused_for_that_line(
    tmp_path: Path,
) -> None:
    batch = _jsonl(tmp_path / "b.jsonl", ["{broken", _line("a", [_image("s3://b/x.jpg"), _text("q")])])
    with pytest.raises(SourceError) as refused:
        open_source(str(batch), stores=ObjectStores(), stage_to=str(tmp_path)).validate()
    assert "1 malformed row;" in refused.value.message and "line 1: invalid JSON" in refused.value.message


def test_a_run_stored_before_system_prompts_existed_is_reused_not_a_conflict(database_url: str, tmp_path: Path) -> None:
    manifest = _jsonl(tmp_path / "m.jsonl", [{"image": "s3://b/a.jpg"}])
    source = open_source(str(manifest), prompting=Prompting.of("q"), stores=ObjectStores())
    (job,) = _submit_source(database_url, source)
    _, sessions = open_ledger(database_url)
    with sessions() as session, session.begin():
        run = session.get(Run, job.run_id)
        assert run is not None
        run.settings = {k: v for k, v in run.settings.items() if k != "system_prompt"}
    again = _submit_source(database_url, open_source(str(manifest), prompting=Prompting.of("q"), stores=ObjectStores()))
    assert [j.id for j in again] == [job.id]
