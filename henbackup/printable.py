"""Text from outside made safe for a terminal, on one line.

What henbackup shows may carry text others wrote: a file name any local user chose, a
message from a repository's server, a hook's output, a snapshot's host. A terminal obeys
the control characters in it (ESC sequences retitle it, rewrite the screen, write files in
some; a bidi override reorders what is read). Every such character is shown escaped.
"""

from __future__ import annotations

import re

# C0 and C1 controls and DEL (Unicode's Cc), and the bidi embeddings, overrides and
# isolates (and the Arabic letter mark) that reorder what follows them.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` on one line: newlines (and carriage returns) become spaces, every other
    control character its escape (`\\x1b`, `\\u202e`)."""
    flat = text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    return _UNSAFE.sub(lambda match: match.group().encode("unicode_escape").decode(), flat)
