"""CSV cells a spreadsheet shows as text, never runs: the OWASP CSV-injection rule, for
every CSV a door writes (``bonexr predict``'s results, the worklist's ``export.csv``).
Review notes and file names are free text from users; ``=HYPERLINK(...)`` must stay text.
"""

from __future__ import annotations

#: First characters a spreadsheet treats as a formula (and the quote that escapes them).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def escape_cell(value: object) -> str:
    """A cell a spreadsheet shows as text: one leading ``'`` before a formula character
    (OWASP's CSV-injection advice); :func:`unescape_cell` undoes it exactly."""
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def unescape_cell(text: str) -> str:
    return text[1:] if text.startswith("'") else text
