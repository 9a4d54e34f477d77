"""Output tables: schemas (one place), row builders, the Ray sink, and the commit protocol."""
