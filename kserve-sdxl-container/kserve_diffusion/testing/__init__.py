"""Tiny random-weight pipelines (real diffusers classes) for tests and the demo, and checkpoint export."""

from .. import startup_notes

# The tiny tool imports diffusers at once: the library start-up notes are told in our words here too (make demo).
startup_notes.install()
