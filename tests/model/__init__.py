"""model tier."""
