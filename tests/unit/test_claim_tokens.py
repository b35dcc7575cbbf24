"""What a broker message may ask for: a count of jobs within bounds, or (the format before tokens) a list
of job ids counted by its length; anything else is not one of our messages."""

from __future__ import annotations

import pytest

from vlmbatch.schema.contracts.tokens import MAX_TOKEN_JOBS, token_jobs


@pytest.mark.parametrize(
    ("argument", "jobs"),
    [
        (16, 16),
        (1, 1),
        (MAX_TOKEN_JOBS, MAX_TOKEN_JOBS),
        ([7, 8, 9], 3),
        (list(range(5000)), MAX_TOKEN_JOBS),
        (0, None),
        (-3, None),
        (MAX_TOKEN_JOBS + 1, None),
        (True, None),  # a bool is an int to Python, not to us
        (16.0, None),
        ("16", None),
        ([], None),
        ([1, "2"], None),
        ({"jobs": 16}, None),
        (None, None),
    ],
)
def test_token_jobs(argument: object, jobs: int | None) -> None:
    assert token_jobs(argument) == jobs
