"""What "done" means: the unit record (its schema), the results store, the one digest of a unit's
identity and the one row signature. ``bench.engine`` writes records here; ``bench.report`` only
reads them."""
