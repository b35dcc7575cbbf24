"""Prompt building without services: image placeholders, the options helper, templates in the sandbox,
a job's own request settings and identity."""

from __future__ import annotations

import hashlib
import json

import pytest

from vlmbatch.producer.sources.prompts import Prompting, PromptTemplate, format_options
from vlmbatch.schema.contracts.errors import SourceError
from vlmbatch.schema.contracts.models import JobParams, JobSpec, RunSettings, SamplingSettings
from vlmbatch.schema.contracts.placement import PlaceholderMismatch, unplaced_images, user_layout, with_image_tokens


def test_a_question_without_placeholders_gets_its_images_first() -> None:
    assert user_layout("What is shown?", 2) == (0, 1, "What is shown?")


def test_numbered_placeholders_place_each_image_where_the_text_names_it() -> None:
    text = "Compare <image 2> with <image 1>. Which is larger?"
    assert user_layout(text, 2) == ("Compare ", 1, " with ", 0, ". Which is larger?")


def test_bare_placeholders_take_the_next_image_and_a_reference_back_stays_text() -> None:
    assert user_layout("<image>\nLeft; <image> right", 2) == (0, "\nLeft; ", 1, " right")
    assert user_layout("<image 1> a. Is <image 1> red?", 1) == (0, " a. Is <image 1> red?")


def test_images_no_placeholder_places_go_before_the_text_in_their_order() -> None:
    # MMMU: the question places <image 1>, its options hold <image 2> (left as text unless rendered).
    assert user_layout("Which is <image 1>?", 2) == (1, "Which is ", 0, "?")
    assert unplaced_images("Which is <image 1>?", 2) == 1
    # ViRL: one `<image>` for two images.
    assert user_layout("<image>\nCompare them.", 2) == (1, 0, "\nCompare them.")
    assert unplaced_images("Only <image 2> here", 3) == 2
    assert unplaced_images("No placeholder", 3) == 0


@pytest.mark.parametrize(
    ("text", "images", "message"),
    [
        ("<image 3> and <image 1>", 2, "<image 3> names no image"),
        ("<image> <image> <image>", 2, "more placeholders"),
        ("<image 0>", 1, "names no image"),
    ],
)
def test_placeholders_that_do_not_match_the_images_are_refused(text: str, images: int, message: str) -> None:
    with pytest.raises(PlaceholderMismatch, match=message):
        user_layout(text, images)


def test_options_come_as_lettered_lines_from_a_list_or_a_python_list_string() -> None:
    assert format_options(["cat", "dog"]) == "A. cat\nB. dog"
    assert format_options("['<image 1>', 'a \"quoted\" one']") == 'A. <image 1>\nB. a "quoted" one'
    for bad in ("not a list", "[]", 3):
        with pytest.raises(ValueError, match="options"):
            format_options(bad)


def _spec(prompting: Prompting, **meta: object) -> JobSpec:
    """A row that brings no question of its own, as a source yields it under `prompting`."""
    return JobSpec(images=("file:///a.jpg",), question=prompting.default_question, meta=dict(meta) or None)


def test_a_template_renders_the_row_columns_with_the_options_filter() -> None:
    template = PromptTemplate("{{ question }}\n{{ options | options }}\nAnswer with a letter.")
    prompting = Prompting(questions=["Which animal?"], template=template)
    (job,) = prompting.expand(_spec(prompting, options="['cat', 'dog']"))
    assert job.question == "Which animal?\nA. cat\nB. dog\nAnswer with a letter."
    assert job.meta == {"options": "['cat', 'dog']"}


def test_a_missing_column_is_an_error_of_the_row_not_an_empty_string() -> None:
    prompting = Prompting(questions=[], template=PromptTemplate("{{ query }} ({{ unit }})"))
    with pytest.raises(ValueError, match="'unit' is undefined"):
        prompting.expand(_spec(prompting, query="How far?"))


def test_the_sandbox_refuses_reaching_into_python_and_the_reference_is_not_in_the_context() -> None:
    escape = Prompting(questions=["q"], template=PromptTemplate("{{ question.__class__.__mro__[1].__subclasses__() }}"))
    with pytest.raises(ValueError, match="prompt template"):
        escape.expand(_spec(escape))
    leak = Prompting(questions=["q"], template=PromptTemplate("{{ reference }}"))
    with pytest.raises(ValueError, match="'reference' is undefined"):
        leak.expand(JobSpec(images=("file:///a.jpg",), question=leak.default_question, reference="B"))


def test_a_template_that_does_not_parse_refuses_at_once() -> None:
    with pytest.raises(SourceError, match="not a valid template"):
        PromptTemplate("{{ question ")


def test_several_questions_make_one_job_each_and_a_row_question_stays_alone() -> None:
    prompting = Prompting(questions=["Is there a person?", "Is it indoors?"], template=None)
    assert [j.question for j in prompting.expand(_spec(prompting))] == ["Is there a person?", "Is it indoors?"]
    own = JobSpec(images=("file:///a.jpg",), question="Own?")
    assert [j.question for j in prompting.expand(own)] == ["Own?"]


def test_a_rendered_question_whose_placeholders_miss_an_image_is_refused() -> None:
    prompting = Prompting(questions=["Compare <image 1> and <image 3>"], template=None)
    spec = JobSpec(images=("file:///a.jpg", "file:///b.jpg"), question=prompting.default_question)
    with pytest.raises(ValueError, match="image placeholders: <image 3> names no image"):
        prompting.expand(spec)


def test_job_params_override_only_what_they_set_within_the_run_bounds() -> None:
    run = SamplingSettings(temperature=0.6, max_tokens=1000)
    sampling = JobParams(max_tokens=64, top_p=0.5).sampling(run)
    assert (sampling.max_tokens, sampling.top_p, sampling.temperature) == (64, 0.5, 0.6)
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        JobParams(max_tokens=0)


def test_identity_is_unchanged_without_params_and_a_custom_id_makes_two_lines_two_jobs() -> None:
    plain = JobSpec(images=("s3://b/a.jpg",), question="q")
    # The key of every job submitted before jobs had params: an upgrade must not duplicate them.
    legacy = hashlib.sha256(b"1|12:s3://b/a.jpg1:q").hexdigest()[:32]
    assert plain.input_key() == legacy
    one = JobSpec(images=("s3://b/a.jpg",), question="q", meta={"custom_id": "r1"})
    two = JobSpec(images=("s3://b/a.jpg",), question="q", meta={"custom_id": "r2"})
    assert len({plain.input_key(), one.input_key(), two.input_key()}) == 3
    seeded = JobSpec(images=("s3://b/a.jpg",), question="q", params=JobParams(seed=1))
    assert seeded.input_key() != plain.input_key()


def test_a_training_record_puts_image_tokens_where_the_job_placed_its_images_in_token_order() -> None:
    prompt, images = with_image_tokens("Is <image 2> like <image 1>?", ["a.jpg", "b.jpg"], "<image>")
    assert (prompt, images) == ("Is <image> like <image>?", ["b.jpg", "a.jpg"])
    assert with_image_tokens("Describe.", ["a.jpg"], "<image>") == ("<image>Describe.", ["a.jpg"])
    # Older jobs whose text never matched their images keep the images-first layout they were sent with.
    assert with_image_tokens("<image 3>?", ["a.jpg"], "<image>") == ("<image><image 3>?", ["a.jpg"])


def test_a_run_without_a_system_prompt_keeps_the_fingerprint_it_had_before_system_prompts() -> None:
    settings = RunSettings(model="m")
    before = settings.model_dump(mode="json")
    del before["system_prompt"]  # what a run stored before the field existed holds
    for later in ("repetition_detection", "thinking_token_budget"):  # and these, added to sampling since
        del before["sampling"][later]
    legacy = hashlib.sha256(json.dumps(before, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:10]
    assert settings.fingerprint() == legacy
    assert RunSettings.model_validate(before) == settings
    assert RunSettings(model="m", system_prompt="Be brief.").fingerprint() != legacy
