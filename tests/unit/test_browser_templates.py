"""The browser's Jinja2 templates escape what they print: a run named like a script, a message with
markup and control characters come out as text."""

from __future__ import annotations

from datetime import datetime

from vlmbatch.producer.browser.pages import message_page, runs_page
from vlmbatch.producer.browser.queries import RunSummary
from vlmbatch.schema.ledger.status import Progress, StatusReport
from vlmbatch.schema.ledger.tables import Run

HOSTILE = "<script>alert('run')</script>"


def test_a_hostile_run_name_and_model_are_printed_as_text() -> None:
    run = Run(id=7, name=HOSTILE, model='"><img src=x onerror=alert(1)>', created_at=datetime(2026, 12, 1, 9, 30))
    counts = StatusReport.empty_counts() | {"queued": 2, "succeeded": 1}
    report = StatusReport(run=7, total=3, counts=counts, errors={})
    html = runs_page([RunSummary(run=run, progress=Progress(report, 0.5, 4.0))], next_before=None)
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;alert(&#39;run&#39;)&lt;/script&gt;" in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert '<a href="/runs/7?status=queued#results"><span class="badge s-queued">queued 2</span></a>' in html
    assert '<progress value="1" max="3"></progress>' in html


def test_a_message_page_escapes_markup_and_shows_control_characters_as_replacements() -> None:
    html = message_page("Not <b>found</b>", "no job \x00\x1b[31m <i>here</i>")
    assert "<b>" not in html and "<i>" not in html and "\x00" not in html and "\x1b" not in html
    assert "<title>Not &lt;b&gt;found&lt;/b&gt; · vlmbatch</title>" in html
    assert "no job \ufffd\ufffd[31m &lt;i&gt;here&lt;/i&gt;" in html
