"""Pure Beam steps, no I/O: parse, dedup, window. Each is a composite with documented semantics."""
