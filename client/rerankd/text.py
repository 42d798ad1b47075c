"""What counts as text: the rule the server refuses queries by, for clients and the bridge too."""

from __future__ import annotations

import re

#: A character that shows: none of whitespace, the control characters (C0, DEL, C1) and Unicode's
#: default-ignorable code points (zero-width spaces and joiners, the BOM, soft hyphen, bidi
#: marks, variation selectors, Hangul fillers, tags).
_VISIBLE = re.compile(
    r"[^\s\x00-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f"
    r"\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8"
    r"\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)


def visible(text: str) -> bool:
    """Whether ``text`` holds a character that shows. A query of none says nothing, like a
    blank one: the server refuses it (INVALID_ARGUMENT), and the bridge does not send it."""
    return _VISIBLE.search(text) is not None
