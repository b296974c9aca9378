"""verl recipes: ``common`` (shared by both), ``samr1`` and ``veteran``."""
