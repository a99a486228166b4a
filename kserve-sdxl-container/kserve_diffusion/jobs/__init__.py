"""Jobs: long generations submitted, followed and fetched later, in a store every replica shares."""
