"""Telling an OpenAI batch file from a manifest reads a bounded head of each line (issue 29, L5): a first
line holding a 100 MB `data:` image is judged by its keys, not parsed whole (which held the line, its
stripped copy and the parsed image at once). The peak is measured in a fresh process, under an
address-space limit, by VmHWM (Linux carries ru_maxrss across fork and exec)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vlmbatch.producer.sources.batch_sniff import is_openai_batch

IMAGE_CHARS = 100 * 1024 * 1024
ADDRESS_SPACE = 2 * 1024**3
# Growth of the peak while sniffing: a bounded head is ~1 MB; parsing the line whole costs 300+ MB.
MAX_GROWTH_MIB = 64

_SNIFF_CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
from vlmbatch.producer.sources.batch_sniff import is_openai_batch

def peak_mib():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024

baseline = peak_mib()
with open(sys.argv[1], 'rb') as reader:
    found = is_openai_batch(reader)
print(json.dumps({"batch": found, "growth_mib": peak_mib() - baseline}))
"""


def _request(custom_id: str, url: str) -> dict[str, object]:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is shown?"}]
    body = {"model": "m", "messages": [{"role": "user", "content": content}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def _write_huge_first_line(path: Path, head: str, tail: str) -> None:
    with path.open("w", encoding="utf-8") as file:
        file.write(head)
        chunk = "A" * (1024 * 1024)
        for _ in range(IMAGE_CHARS // len(chunk)):
            file.write(chunk)
        file.write(tail + "\n")


def _sniff_in_a_child(path: Path) -> dict[str, object]:
    child = [sys.executable, "-c", _SNIFF_CHILD, str(path), str(ADDRESS_SPACE)]
    done = subprocess.run(child, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert isinstance(report, dict)
    return report


def test_a_batch_file_whose_first_line_holds_a_huge_data_image_is_sniffed_in_bounded_memory(tmp_path: Path) -> None:
    batch = tmp_path / "batch.jsonl"
    marker = "data:image/png;base64,MARK"
    head, tail = json.dumps(_request("request-1", marker)).split("MARK")
    _write_huge_first_line(batch, head, tail)
    assert batch.stat().st_size > IMAGE_CHARS
    report = _sniff_in_a_child(batch)
    assert report["batch"] is True
    assert isinstance(report["growth_mib"], float) and report["growth_mib"] < MAX_GROWTH_MIB, report


def test_a_manifest_whose_first_line_holds_a_huge_data_image_is_no_batch_file(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.jsonl"
    head, tail = json.dumps({"image": "data:image/png;base64,MARK", "question": "What?"}).split("MARK")
    _write_huge_first_line(manifest, head, tail)
    report = _sniff_in_a_child(manifest)
    assert report["batch"] is False
    assert isinstance(report["growth_mib"], float) and report["growth_mib"] < MAX_GROWTH_MIB, report


@pytest.mark.parametrize(
    ("lines", "batch"),
    [
        ([json.dumps(_request("r1", "a.jpg"))], True),
        (["", "not json", json.dumps(_request("r1", "a.jpg"))], True),  # a broken line does not hide it
        ([json.dumps({"image": "a.jpg", "custom_id": "r1"})], False),  # a manifest with a custom_id column
        ([json.dumps({"image": "a.jpg", "meta": {"custom_id": "r1", "body": 1}})], False),  # nested keys
        (['{"custom_id": "r1", "body": {"messages": [[[[[[[['], True),  # cut off in body: its keys count
        ([json.dumps([{"custom_id": "r1", "body": {}}])], False),  # not an object
    ],
)
def test_the_sniff_reads_the_top_level_keys_of_the_first_lines(tmp_path: Path, lines: list[str], batch: bool) -> None:
    path = tmp_path / "f.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with path.open("rb") as reader:
        assert is_openai_batch(reader) is batch
