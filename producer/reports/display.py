"""How numbers and texts are shown to people, the same way in the terminal and in the browser."""

from __future__ import annotations


def duration(seconds: float | None) -> str:
    """Seconds as h:mm:ss (or mm:ss); `--:--` when unknown."""
    if seconds is None:
        return "--:--"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def preview(text: str | None, chars: int) -> str | None:
    """`text` on one line (whitespace runs collapsed), cut to `chars` with an ellipsis; None stays None."""
    if text is None:
        return None
    flat = " ".join(text.split())
    return flat if len(flat) <= chars else flat[: chars - 1] + "…"
