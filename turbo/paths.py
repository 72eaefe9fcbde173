"""File names made from user text (prompts, captions, sampler names) that stay inside their folder."""

from __future__ import annotations

import re


def safe_name(text: str, limit: int = 60) -> str:
    """``text`` as a file-name stem: lower-case letters, digits and single underscores, at most
    ``limit`` characters, never empty. No separator or dot survives, so ``x/../../../tmp/escaped``
    becomes ``x_tmp_escaped`` and cannot leave the folder it is joined to."""
    name = re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_")[:limit].rstrip("_")
    return name or "prompt"
