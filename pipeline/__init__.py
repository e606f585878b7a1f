"""Effectively-once streaming of transaction events into a warehouse with Apache Beam.

The folder listing follows the data: sources -> transforms (parse, dedup, windows) -> sinks
(MERGE upsert through a warehouse seam); events.py and tables.py are the contracts in and out.
"""
