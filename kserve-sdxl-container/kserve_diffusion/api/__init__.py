"""The request contract: the schema and its rules, decoded inputs, and generation results."""
