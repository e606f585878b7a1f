"""A BigQuery merge cycle: one script, one multi-statement transaction, set-based.

The script takes what ``staged_events`` holds when its transaction starts (snapshot isolation),
merges it into the ledger, ``transactions`` and ``account_window_totals``, records the versions
it refused in ``staged_conflicts``, and deletes exactly the staged rows it took (by
``stage_id``), all or nothing: a crash or a failed statement rolls everything back and the next
cycle takes the same rows again; rows appended meanwhile wait for the next cycle. The conflicts
become dead letters after the commit (pipeline/sinks/bigquery/, ``merge_staged``), from that
durable table, so none is lost between the two.

The rules are those of pipeline/sinks/ledger_rules.py and DuckDB's SQL: identical versions count
once; of several primaries of one event_id the first in ``version_order`` stays primary; a
version whose event_id the ledger holds with other fields is a conflict; ``transactions`` keeps
each transaction's newest event; window totals are recomputed from the ledger, exactly.

What each statement reads (docs/BIGQUERY.md, "Merge cycles"): the ledger lookup of the cycle's
event_ids reads the whole ledger's ``event_id`` column, pruned to the blocks of those ids by the
table's clustering; every write restricts its target's partitions with script variables (a
constant for BigQuery's pruning): the ledger INSERT writes only new rows, the ``transactions``
UPDATE only the partitions where the touched transactions' rows are, the totals only the cycle's
windows. BigQuery runs DML in a transaction as plain INSERT and UPDATE ... FROM here, not MERGE:
the local emulator refuses MERGE inside a transaction, and the two statements are what a MERGE
would do.
"""

from __future__ import annotations

from pipeline.events import CONTRACT_FIELDS, VERSION_ORDER_SQL
from pipeline.tables import CONTRACT_COLUMNS, TRANSACTION_COPIED, Column, Table

_FIELDS = ", ".join(CONTRACT_FIELDS)

# The versions a cycle refused, waiting to become dead letters: the refused version, and the
# version the ledger holds for its event_id (its ``kept_`` columns, all NULL when the ledger holds
# none: another version of the id was chosen in the same cycle and not inserted).
STAGED_CONFLICTS = Table(
    name="staged_conflicts",
    columns=(
        Column("conflict_id", "STRING", True, "The cycle's id and a number: unique."),
        Column("cycle_id", "STRING", True, "The merge cycle that refused the version."),
        *CONTRACT_COLUMNS,
        *(
            Column(f"kept_{c.name}", c.type, False, "The ledger's version.")
            for c in CONTRACT_COLUMNS
        ),
    ),
    key=("conflict_id",),
    time_column="event_time",
    description="Versions refused by merge cycles, waiting to become dead letters.",
    partitioned=False,
)


def _newer(source: str, target: str) -> str:
    return (
        f"({source}.event_time > {target}.event_time OR ({source}.event_time ="
        f" {target}.event_time AND {source}.event_id > {target}.event_id))"
    )


def _normalised(prefix: str, sign: str) -> str:
    """Columns ``{prefix}h, {prefix}m, {prefix}l, {prefix}n``: the window's sums of amount parts
    (times ``sign``) with each carry moved up, so that every part but ``h`` lies in its digits'
    range; the total is then ``h * 10^20 + m * 10^10 + l + n * 10^-9`` with 0 <= m, l, n.
    DIV's first argument is a parenthesised difference: the local emulator drops the brackets
    of an unparenthesised one (``DIV(a - b, c)`` became ``a - b DIV c``)."""
    nano, ten = 1_000_000_000, 10_000_000_000
    n = f"{sign}nanos"
    rn = f"MOD(MOD({n}, {nano}) + {nano}, {nano})"
    low = f"({sign}low + DIV(({n} - {rn}), {nano}))"
    rl = f"MOD(MOD({low}, {ten}) + {ten}, {ten})"
    middle = f"({sign}middle + DIV(({low} - {rl}), {ten}))"
    rm = f"MOD(MOD({middle}, {ten}) + {ten}, {ten})"
    high = f"({sign}high + DIV(({middle} - {rm}), {ten}))"
    return f"{high} AS {prefix}h, {rm} AS {prefix}m, {rl} AS {prefix}l, {rn} AS {prefix}n"


def _digits(prefix: str) -> str:
    return (
        f"CONCAT(CAST({prefix}h AS STRING), LPAD(CAST({prefix}m AS STRING), 10, '0'),"
        f" LPAD(CAST({prefix}l AS STRING), 10, '0'), '.', LPAD(CAST({prefix}n AS STRING), 9, '0'))"
    )


# NUMERIC(38, 9) holds |x| < 10^29: a normalised total fits when its h < 10^9. A negative total
# is written from the normalised parts of its negation.
_LIMIT_HIGH = 10**9
_EXACT_TOTALS = f"""
    SELECT account_id, currency, window_start, window_end, event_count,
           IF(ph >= 0, ph >= {_LIMIT_HIGH}, nh >= {_LIMIT_HIGH}) AS total_overflow,
           CASE WHEN ph >= 0 AND ph < {_LIMIT_HIGH} THEN CAST({_digits("p")} AS NUMERIC)
                WHEN ph < 0 AND nh < {_LIMIT_HIGH} THEN CAST(CONCAT('-', {_digits("n")}) AS NUMERIC)
           END AS total_amount
    FROM (SELECT *, {_normalised("p", "")}, {_normalised("n", "-")} FROM cycle_sums)
"""


def cycle_script(
    ledger: str,
    transactions: str,
    totals: str,
    staged: str,
    conflicts: str,
    *,
    horizon: bool = False,
) -> str:
    """The script of one merge cycle over the given (quoted, validated) table references.
    Parameters: ``@cycle`` (the cycle's id) and ``@now``; with ``horizon``, ``@horizon_days``:
    the ledger is searched for the cycle's event_ids only within that many days of the cycle's
    event times (the partitions between; 0 days is not a horizon: leave ``horizon`` false).
    Its result is one row of counts."""
    within = "AND event_time BETWEEN hlo AND hhi" if horizon else ""
    tx_fields = ", ".join(TRANSACTION_COPIED)
    differs = " OR ".join(
        f"s.{c} IS DISTINCT FROM l.{c}" for c in CONTRACT_FIELDS if c != "event_id"
    )
    return f"""
DECLARE lo TIMESTAMP;
DECLARE hi TIMESTAMP;
DECLARE wlo TIMESTAMP;
DECLARE whi TIMESTAMP;
DECLARE tlo TIMESTAMP;
DECLARE thi TIMESTAMP;
DECLARE hlo TIMESTAMP;
DECLARE hhi TIMESTAMP;
DECLARE inserted INT64 DEFAULT 0;
DECLARE refused INT64 DEFAULT 0;
DECLARE upserted INT64 DEFAULT 0;
DECLARE touched_windows INT64 DEFAULT 0;
BEGIN TRANSACTION;
CREATE TEMP TABLE cycle AS SELECT * FROM {staged};
CREATE TEMP TABLE versions AS
WITH distinct_versions AS (
    SELECT {_FIELDS}, LOGICAL_OR(is_primary) AS is_primary,
           MIN(window_start) AS window_start, MIN(window_end) AS window_end, COUNT(*) AS copies
    FROM cycle GROUP BY {_FIELDS}
)
SELECT {_FIELDS},
       is_primary AND ROW_NUMBER() OVER (
           PARTITION BY event_id ORDER BY is_primary DESC, {VERSION_ORDER_SQL}) = 1 AS is_primary,
       window_start, window_end, copies
FROM distinct_versions;
SET lo = (SELECT MIN(event_time) FROM versions);
SET hi = (SELECT MAX(event_time) FROM versions);
SET wlo = (SELECT MIN(window_start) FROM versions);
SET whi = (SELECT MAX(window_end) FROM versions);
{"SET hlo = TIMESTAMP_SUB(lo, INTERVAL @horizon_days DAY);" if horizon else ""}
{"SET hhi = TIMESTAMP_ADD(hi, INTERVAL @horizon_days DAY);" if horizon else ""}
CREATE TEMP TABLE held AS
SELECT {_FIELDS} FROM {ledger} WHERE event_id IN (SELECT event_id FROM versions) {within};
INSERT INTO {ledger} ({_FIELDS}, ingested_at)
SELECT {_FIELDS}, @now FROM versions
WHERE is_primary AND event_id NOT IN (SELECT event_id FROM held);
SET inserted = @@row_count;
CREATE TEMP TABLE after_insert AS
SELECT {_FIELDS} FROM held
UNION ALL
SELECT {_FIELDS} FROM versions WHERE is_primary AND event_id NOT IN (SELECT event_id FROM held);
INSERT INTO {conflicts}
    (conflict_id, cycle_id, {_FIELDS}, {", ".join("kept_" + c for c in CONTRACT_FIELDS)})
SELECT CONCAT(@cycle, '-', CAST(ROW_NUMBER() OVER () AS STRING)), @cycle,
       {", ".join("s." + c for c in CONTRACT_FIELDS)},
       {", ".join("l." + c for c in CONTRACT_FIELDS)}
FROM versions AS s LEFT JOIN after_insert AS l ON l.event_id = s.event_id
WHERE l.event_id IS NULL OR {differs};
SET refused = @@row_count;
CREATE TEMP TABLE newest AS
SELECT transaction_id, {tx_fields} FROM after_insert
WHERE event_id IN (SELECT event_id FROM versions)
QUALIFY ROW_NUMBER() OVER (
    PARTITION BY transaction_id ORDER BY event_time DESC, event_id DESC) = 1;
CREATE TEMP TABLE existing AS
SELECT transaction_id, event_time FROM {transactions}
WHERE transaction_id IN (SELECT transaction_id FROM newest);
SET tlo = (SELECT MIN(event_time) FROM existing);
SET thi = (SELECT MAX(event_time) FROM existing);
UPDATE {transactions} AS t
SET {", ".join(f"{f} = s.{f}" for f in TRANSACTION_COPIED)}, updated_at = @now
FROM newest AS s
WHERE t.transaction_id = s.transaction_id AND t.event_time BETWEEN tlo AND thi
  AND {_newer("s", "t")};
SET upserted = @@row_count;
INSERT INTO {transactions} (transaction_id, {tx_fields}, updated_at)
SELECT transaction_id, {tx_fields}, @now FROM newest
WHERE transaction_id NOT IN (SELECT transaction_id FROM existing);
SET upserted = upserted + @@row_count;
CREATE TEMP TABLE cycle_sums AS
WITH w AS (
    -- One row per key of the totals table, so no target row meets two source rows (rows staged
    -- by runs with another --window_size_seconds would give one window_start two ends).
    SELECT account_id, currency, window_start, MAX(window_end) AS window_end
    FROM versions GROUP BY account_id, currency, window_start
),
parts AS (
    SELECT w.account_id, w.currency, w.window_start, w.window_end, l.event_id,
           CAST(SIGN(l.amount) AS INT64) AS sign,
           LPAD(CAST(ABS(TRUNC(l.amount)) AS STRING), 30, '0') AS digits,
           CAST((l.amount - TRUNC(l.amount)) * 1000000000 AS INT64) AS nanos
    FROM w LEFT JOIN {ledger} AS l
      ON l.account_id = w.account_id AND l.currency = w.currency
     AND l.event_time >= w.window_start AND l.event_time < w.window_end
     AND l.event_time >= wlo AND l.event_time < whi
)
SELECT account_id, currency, window_start, window_end, COUNT(event_id) AS event_count,
       COALESCE(SUM(sign * CAST(SUBSTR(digits, 1, 10) AS INT64)), 0) AS high,
       COALESCE(SUM(sign * CAST(SUBSTR(digits, 11, 10) AS INT64)), 0) AS middle,
       COALESCE(SUM(sign * CAST(SUBSTR(digits, 21, 10) AS INT64)), 0) AS low,
       COALESCE(SUM(nanos), 0) AS nanos
FROM parts GROUP BY account_id, currency, window_start, window_end;
CREATE TEMP TABLE cycle_totals AS {_EXACT_TOTALS};
UPDATE {totals} AS t
SET window_end = s.window_end, event_count = s.event_count, total_amount = s.total_amount,
    total_overflow = s.total_overflow, updated_at = @now
FROM cycle_totals AS s
WHERE t.account_id = s.account_id AND t.currency = s.currency
  AND t.window_start = s.window_start AND t.window_start BETWEEN wlo AND whi
  AND (t.event_count != s.event_count OR t.total_amount IS DISTINCT FROM s.total_amount
       OR t.window_end != s.window_end);
SET touched_windows = @@row_count;
INSERT INTO {totals} (account_id, currency, window_start, window_end, event_count, total_amount,
                      total_overflow, updated_at)
SELECT account_id, currency, window_start, window_end, event_count, total_amount,
       total_overflow, @now
FROM cycle_totals AS s
WHERE s.event_count > 0 AND NOT EXISTS (
    SELECT 1 FROM {totals} AS t
    WHERE t.account_id = s.account_id AND t.currency = s.currency
      AND t.window_start = s.window_start AND t.window_start BETWEEN wlo AND whi);
SET touched_windows = touched_windows + @@row_count;
DELETE FROM {staged} WHERE stage_id IN (SELECT stage_id FROM cycle);
COMMIT TRANSACTION;
SELECT (SELECT COUNT(*) FROM cycle) AS staged, inserted, refused AS conflicts,
       upserted AS transactions_upserted, touched_windows AS windows_upserted,
       (SELECT COUNT(*) FROM {conflicts}) AS pending_conflicts;
"""
