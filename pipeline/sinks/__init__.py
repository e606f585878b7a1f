"""Sinks: the MERGE upsert composite (upsert.py), the warehouse seam (warehouse.py), the rules
every warehouse applies (ledger_rules.py) and one module per warehouse."""
