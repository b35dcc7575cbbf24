"""Prompt templates render within bounds: a template that would build a huge string, loop without end or
reach a hidden attribute is an error of its row, found at once."""

from __future__ import annotations

import pytest

from vlmbatch.producer.sources.prompts import PromptTemplate

ROW = {"question": "What is shown?", "images": ["file:///a.png"], "image": "file:///a.png", "options": ["x", "y"]}


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("{{ 'a' * 10**11 }}", "would build"),
        ("{{ 'a' * 10**9 }}", "would build"),
        ("{{ ['a'] * 10**8 }}", "would build"),
        ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}x", "loops passed"),
        ("{% for i in range(2000) %}{{ 'a' * 999 }}{% endfor %}", "passed 1,000,000 characters"),
        ("{{ images|map(attribute='__class__')|list }}", "__class__"),
        ("{{ 2 ** 100000 }}", "exponent"),
    ],
)
def test_a_template_over_its_bounds_is_a_row_error(template: str, reason: str) -> None:
    with pytest.raises(ValueError, match="prompt template") as refused:
        PromptTemplate(template).render(ROW)
    assert reason in str(refused.value)


def test_a_template_within_its_bounds_renders() -> None:
    template = "{{ question }}\n{{ options|options }}\n{% for i in range(3) %}{{ i }}{% endfor %} {{ 'ab' * 3 }}"
    assert PromptTemplate(template).render(ROW) == "What is shown?\nA. x\nB. y\n012 ababab"
