"""Marks that say an output was made by a trained model: signed C2PA content credentials and an invisible
watermark, applied to every file after generation (docs/operations.md says what they claim and how to check)."""

from .marker import MARKS, NO_MARKING, NO_MARKS, Marking, Marks, marks_text, open_marks, parse_marks

__all__ = ["MARKS", "NO_MARKING", "NO_MARKS", "Marking", "Marks", "marks_text", "open_marks", "parse_marks"]
