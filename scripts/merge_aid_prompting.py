"""One-off merge aid for branch `cli` (issue 28): delete it once `cli` and `seam` are both merged.

Branch `cli` gives open_source one `prompting=Prompting(...)` for what is asked (it was `question=`,
`questions=`, `prompt_template=`) and renames submit's `question=` to `name_basis=`; branch `seam` changes
the same calls' `s3_endpoint_url=` to `stores=`. For files that only call them (tests, bench), this takes
seam's side of each conflict block (the side with `stores=`; else the current branch's) and rewrites every
open_source and submit call to cli's form, adding the Prompting import where it is used.

    python scripts/merge_aid_prompting.py $(git diff --name-only --diff-filter=U | grep '^tests/\\|^bench/')

Tried both ways (seam merged into cli, cli into seam): it leaves every test file clean; bench/scale_seed.py
keeps cli's create_run by hand (with seam's `stores=ObjectStores()` for `s3_endpoint_url=None`). The
sources (producer/sources/open.py, producer/cli/submit.py) and docs/ARCHITECTURE.md are merged by hand.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_ARG = r"""(?:"[^"]*"|'[^']*'|[A-Za-z_][\w.]*(?:\[[^\]]*\])?(?:\([^()]*\))?|\([^()]*\))"""
_BLOCK = re.compile(r"^<<<<<<< [^\n]*\n(.*?)^=======\n(.*?)^>>>>>>> [^\n]*\n", re.S | re.M)


def _seam_side(block: re.Match[str]) -> str:
    ours, theirs = block.group(1), block.group(2)
    return theirs if "stores=" in theirs and "stores=" not in ours else ours


def _close(text: str, start: int) -> int:
    depth = 0
    for at in range(start, len(text)):
        if text[at] in "([{":
            depth += 1
        elif text[at] in ")]}":
            depth -= 1
            if depth == 0:
                return at
    raise ValueError(text[start : start + 80])


def _without(call: str, found: re.Match[str]) -> str:
    end = found.end()
    comma = re.match(r",\s*", call[end:])
    return call[: found.start()] + call[end + (comma.end() if comma else 0) :]


def _open_source_call(call: str) -> str:
    question = re.search(rf"\bquestion=({_ARG})", call)
    questions = re.search(rf"\bquestions=({_ARG})", call)
    template = re.search(rf"\bprompt_template=({_ARG})", call)
    one = question.group(1) if question and question.group(1) != "None" else None
    if one and not questions and not template:
        prompting = f"Prompting.of({one})"
    else:
        parts = [f"questions=({one},)"] if one else []
        parts += [f"questions={questions.group(1)}"] if questions else []
        parts += [f"template={template.group(1)}"] if template else []
        prompting = f"Prompting({', '.join(parts)})" if parts else ""
    for found in sorted((f for f in (question, questions, template) if f), key=lambda f: -f.start()):
        call = _without(call, found)
    if prompting:  # right after the URI, the first argument
        depth = 0
        for at in range(call.index("(") + 1, len(call)):
            depth += call[at] in "([{"
            depth -= call[at] in ")]}"
            if call[at] == "," and depth == 0:
                return call[: at + 1] + f" prompting={prompting}," + call[at + 1 :]
    return re.sub(r",\s*\)$", ")", call)


def _rewrite(text: str, name: str, fix: object) -> str:
    out, done = [], 0
    for found in re.finditer(rf"(?<![\w.]){name}\(", text):
        if found.start() < done:
            continue
        end = _close(text, found.end() - 1) + 1
        call = text[found.start() : end]
        call = fix(call) if callable(fix) else re.sub(r"(?<![\w.])question=", "name_basis=", call)
        out += [text[done : found.start()], call]
        done = end
    return "".join(out) + text[done:]


def main(paths: list[str]) -> None:
    for path in map(Path, paths):
        text = _BLOCK.sub(_seam_side, path.read_text())
        text = _rewrite(_rewrite(text, "open_source", _open_source_call), "submit", None)
        if "Prompting" in text and not re.search(r"import[^\n]*\bPrompting\b", text):
            text = re.sub(
                r"^(\s*)(from vlmbatch\.producer\.sources\.open import open_source\n)",
                r"\1\2\1from vlmbatch.producer.sources.prompts import Prompting\n",
                text,
                count=1,
                flags=re.M,
            )
        path.write_text(text)


if __name__ == "__main__":
    main(sys.argv[1:])
