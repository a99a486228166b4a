"""server tier."""
