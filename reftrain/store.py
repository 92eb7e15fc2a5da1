"""The shared store: DuckLake (a SQL catalog + Parquet files) through DuckDB.

One long-lived connection per process (attaching costs tens of ms), catalog conflicts retried with
back-off, small streaming inserts inlined into the catalog (DATA_INLINING_ROW_LIMIT) and flushed to
Parquet in batches by ``compact()``. Extensions are loaded from the duckdb-extension-* wheels, so
nothing is downloaded at run time.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import numpy as np

from reftrain import retry
from reftrain.blobs import Blobs, blobs_for
from reftrain.blobs import S3Config as S3Config  # re-exported: the store's S3 connection
from reftrain.errors import StoreError
from reftrain.records import Candle, Pivot
from reftrain.redact import REDACTED, redact_text
from reftrain.settings import PlatformSettings, catalog_password
from reftrain.window import COLUMNS, Window

log = logging.getLogger(__name__)
T = TypeVar("T")

LAKE = "lake"
INLINING_ROW_LIMIT = 1000

DDL = [
    f"""CREATE TABLE IF NOT EXISTS {LAKE}.candles (
        symbol VARCHAR NOT NULL, timeframe VARCHAR NOT NULL, open_time BIGINT NOT NULL,
        close_time BIGINT NOT NULL, open DOUBLE NOT NULL, high DOUBLE NOT NULL, low DOUBLE NOT NULL,
        close DOUBLE NOT NULL, volume DOUBLE NOT NULL, trades BIGINT, source VARCHAR,
        ingested_at BIGINT)""",
    f"""CREATE TABLE IF NOT EXISTS {LAKE}.candle_indicators (
        symbol VARCHAR NOT NULL, timeframe VARCHAR NOT NULL, open_time BIGINT NOT NULL,
        name VARCHAR NOT NULL, value DOUBLE)""",
    f"""CREATE TABLE IF NOT EXISTS {LAKE}.pivots (
        pivot_id VARCHAR NOT NULL, symbol VARCHAR NOT NULL, timeframe VARCHAR NOT NULL, level INTEGER NOT NULL,
        kind VARCHAR NOT NULL, pivot_time BIGINT NOT NULL, price DOUBLE NOT NULL, confirmed_at BIGINT NOT NULL,
        strength INTEGER)""",
    f"""CREATE TABLE IF NOT EXISTS {LAKE}.model_versions (
        model_key VARCHAR NOT NULL, version BIGINT NOT NULL, checkpoint_path VARCHAR NOT NULL,
        trained_jobs BIGINT NOT NULL, metrics VARCHAR, created_at BIGINT NOT NULL)""",
    f"""CREATE TABLE IF NOT EXISTS {LAKE}.quarantine (
        source VARCHAR, reason VARCHAR, detail VARCHAR, payload VARCHAR, quarantined_at BIGINT)""",
]

CANDLE_COLS = ("symbol", "timeframe", "open_time", "close_time", "open", "high", "low", "close", "volume",
               "trades", "source")


def _extension_path(module: Any, name: str) -> str:
    base = Path(module.__file__).parent / "extensions"
    versions = sorted(p for p in base.iterdir() if p.is_dir())
    if not versions:
        raise StoreError(f"no {name} extension binary in {base}")
    return str(versions[-1] / f"{name}.duckdb_extension")


def _load_extensions(con: duckdb.DuckDBPyConnection, catalog: str, remote: bool = False) -> None:
    import duckdb_extension_ducklake

    con.execute(f"LOAD '{_extension_path(duckdb_extension_ducklake, 'ducklake')}'")
    if remote:  # s3:// data path: httpfs from its wheel, never downloaded at run time
        import duckdb_extension_httpfs

        con.execute(f"LOAD '{_extension_path(duckdb_extension_httpfs, 'httpfs')}'")
    if catalog.startswith("postgres:"):
        import duckdb_extension_postgres_scanner

        con.execute(f"LOAD '{_extension_path(duckdb_extension_postgres_scanner, 'postgres_scanner')}'")


def conninfo_quote(value: str) -> str:
    """A libpq conninfo value: single-quoted, with backslash and quote escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sql_literal(value: str) -> str:
    """A SQL string literal (quotes doubled), so no catalog string can end the ATTACH statement."""
    return "'" + value.replace("'", "''") + "'"


def with_password(catalog: str, password: str | None) -> str:
    """``catalog`` with ``password=<quoted>`` appended (postgres catalogs only)."""
    if password is None or not catalog.startswith("postgres:"):
        return catalog
    return f"{catalog} password={conninfo_quote(password)}"


def attach_statement(catalog: str, data_path: str) -> str:
    """The ATTACH of the DuckLake catalog, every piece escaped as a literal."""
    return (f"ATTACH {sql_literal('ducklake:' + catalog)} AS {LAKE} "
            f"(DATA_PATH {sql_literal(data_path + '/')}, DATA_INLINING_ROW_LIMIT {INLINING_ROW_LIMIT})")


REMOTE_SCHEMES = ("s3://",)


def is_remote(data_path: str) -> bool:
    """An object-store data path (the lake on S3) rather than a local folder."""
    return data_path.startswith(REMOTE_SCHEMES)


def s3_secret_statement(cfg: S3Config) -> str:
    """The DuckDB SECRET for the lake's bucket, every value an escaped literal."""
    if cfg.url_style not in ("path", "vhost"):
        raise StoreError(f"STORE_S3_URL_STYLE must be 'path' or 'vhost', not {cfg.url_style!r}")
    parts = ["TYPE s3", f"REGION {sql_literal(cfg.region)}", f"URL_STYLE {sql_literal(cfg.url_style)}",
             f"USE_SSL {'true' if cfg.use_ssl else 'false'}"]
    if cfg.key_id:
        parts += [f"KEY_ID {sql_literal(cfg.key_id)}", f"SECRET {sql_literal(cfg.secret)}"]
    if cfg.endpoint:
        parts.append(f"ENDPOINT {sql_literal(cfg.endpoint)}")
    return f"CREATE OR REPLACE SECRET reftrain_lake_s3 ({', '.join(parts)})"


@dataclass(frozen=True)
class CandleBatchResult:
    inserted: int
    skipped_duplicates: int


class Store:
    """A DuckLake store. Thread-safe through one lock (DuckDB connections are not shared-safe)."""

    def __init__(self, catalog: str, data_path: str, *, create: bool = True, retries: int = 8,
                 password: str | None = None, s3: S3Config | None = None) -> None:
        if not (catalog.startswith("postgres:") or catalog.startswith("sqlite:") or catalog.endswith(".ducklake")):
            raise StoreError(f"unsupported catalog {redact_text(catalog)!r}: use 'postgres:<conninfo>' or "
                             f"'sqlite:<file>'")
        self.catalog = catalog
        self._attach_catalog = with_password(catalog, password)
        #: True when the Parquet files live on an object store (s3://): no local folder is made.
        self.remote = is_remote(data_path)
        self.data_path = data_path.rstrip("/") if self.remote else os.path.abspath(data_path)
        self.retries = retries
        self._lock = threading.RLock()
        if not self.remote:
            os.makedirs(self.data_path, exist_ok=True)
        self.con = duckdb.connect()
        self.con.execute("SET threads TO 2")
        _load_extensions(self.con, catalog, self.remote)
        self._s3 = s3 or S3Config()
        self._blobs: Blobs | None = None
        if self.remote:
            self._apply_s3(self._s3)
        self._with_retry(lambda: self.con.execute(attach_statement(self._attach_catalog, self.data_path)))
        if create:
            for stmt in DDL:
                self._with_retry(functools.partial(self.con.execute, stmt))

    @classmethod
    def from_settings(cls, settings: PlatformSettings, **kw: Any) -> Store:
        kw.setdefault("password", catalog_password(settings))
        if is_remote(settings.store_data_path):
            kw.setdefault("s3", S3Config.from_settings(settings))
        return cls(settings.store_catalog, settings.store_data_path, **kw)

    def _apply_s3(self, cfg: S3Config) -> None:
        """The bucket's credentials as a DuckDB SECRET (session-only, never persisted). An error is
        raised without the statement and with the secret scrubbed from DuckDB's message."""
        try:
            self.con.execute(s3_secret_statement(cfg))
        except duckdb.Error as exc:
            text = redact_text(str(exc))
            if cfg.secret:
                text = text.replace(cfg.secret, REDACTED)
            raise StoreError(f"cannot configure the S3 lake credentials: {text}") from None

    def close(self) -> None:
        with self._lock:
            self.con.close()

    # -- plumbing ------------------------------------------------------------------------------
    def _with_retry(self, fn: Callable[[], T]) -> T:
        """``fn`` under the store's lock, retried while it fails transiently (reftrain.retry decides by
        exception type: commit conflicts, a lost catalog or object-store connection)."""

        def attempt() -> T:
            with self._lock:
                try:
                    return fn()
                except duckdb.Error:
                    with contextlib.suppress(duckdb.Error):
                        self.con.execute("ROLLBACK")
                    raise

        try:
            return retry.call(attempt, self.retries + 1)
        except duckdb.Error as exc:
            # DuckDB repeats the connection string (password too) in its errors: the
            # message is redacted and the original is not chained (tracebacks print it).
            raise StoreError(f"{type(exc).__name__}: {redact_text(str(exc))}") from None

    def _in_transaction(self, fn: Callable[[], T]) -> T:
        def run() -> T:
            self.con.execute("BEGIN")
            try:
                out = fn()
                self.con.execute("COMMIT")
                return out
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    self.con.execute("ROLLBACK")
                raise

        return self._with_retry(run)

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        return self._with_retry(lambda: self.con.execute(sql, params or []).fetchall())

    # -- candles -------------------------------------------------------------------------------
    def append_candles(self, candles: Sequence[Candle],
                       indicators: Sequence[dict[str, float | None]] | None = None) -> CandleBatchResult:
        """Insert candles not already present on (symbol, timeframe, open_time), with their
        indicator values, in ONE DuckLake transaction. Re-appending is a no-op (replay-safe)."""
        if not candles:
            return CandleBatchResult(0, 0)
        now = int(time.time() * 1000)
        rows = [(*tuple(c.get(k) for k in CANDLE_COLS), now) for c in candles]
        ind_rows = []
        if indicators is not None:
            for c, values in zip(candles, indicators, strict=True):
                for name, value in values.items():
                    ind_rows.append((c["symbol"], c["timeframe"], c["open_time"], name, value))

        def write() -> CandleBatchResult:
            self.con.execute("CREATE OR REPLACE TEMP TABLE _incoming AS SELECT * FROM "
                             f"{LAKE}.candles LIMIT 0")
            _insert_values(self.con, "_incoming", rows)
            inserted = self.con.execute(
                f"""INSERT INTO {LAKE}.candles
                    SELECT DISTINCT ON (i.symbol, i.timeframe, i.open_time) i.* FROM _incoming i
                    WHERE NOT EXISTS (SELECT 1 FROM {LAKE}.candles c WHERE c.symbol = i.symbol
                        AND c.timeframe = i.timeframe AND c.open_time = i.open_time)""").fetchone()
            n = int(inserted[0]) if inserted else 0
            if ind_rows:
                self.con.execute("CREATE OR REPLACE TEMP TABLE _ind AS SELECT * FROM "
                                 f"{LAKE}.candle_indicators LIMIT 0")
                _insert_values(self.con, "_ind", ind_rows)
                self.con.execute(
                    f"""INSERT INTO {LAKE}.candle_indicators SELECT i.* FROM _ind i
                        WHERE NOT EXISTS (SELECT 1 FROM {LAKE}.candle_indicators c WHERE c.symbol = i.symbol
                          AND c.timeframe = i.timeframe AND c.open_time = i.open_time AND c.name = i.name)""")
            return CandleBatchResult(n, len(rows) - n)

        return self._in_transaction(write)

    def read_range(self, symbol: str, timeframe: str, start: int, end: int) -> Window:
        """Candles with start <= open_time <= end, sorted: the window a reference names."""
        rows = self._with_retry(lambda: self.con.execute(
            f"""SELECT open_time, open, high, low, close, volume FROM {LAKE}.candles
                WHERE symbol = ? AND timeframe = ? AND open_time BETWEEN ? AND ?
                ORDER BY open_time""", [symbol, timeframe, start, end]).fetchnumpy())
        return _window(symbol, timeframe, rows)

    def read_last(self, symbol: str, timeframe: str, n: int, end: int | None = None,
                  start: int | None = None) -> Window:
        """The last ``n`` candles with start <= open_time <= end (no bound where None), oldest first.

        ``start`` lets a caller that knows how far back ``n`` rows reach bound the scan: without it
        the query reads the series' whole history (112 ms at 1.2M rows vs 13 ms bounded, #16). The
        caller checks whether ``n`` rows came back and, if not, repeats without the bound."""
        lo = start if start is not None else -(2**62)
        hi = end if end is not None else 2**62
        rows = self._with_retry(lambda: self.con.execute(
            f"""SELECT * FROM (SELECT open_time, open, high, low, close, volume FROM {LAKE}.candles
                WHERE symbol = ? AND timeframe = ? AND open_time BETWEEN ? AND ?
                ORDER BY open_time DESC LIMIT ?)
                ORDER BY open_time""", [symbol, timeframe, lo, hi, n]).fetchnumpy())
        return _window(symbol, timeframe, rows)

    def read_ranges(self, requests: Iterable[tuple[str, str, int, int]]) -> dict[tuple[str, str], Window]:
        """One query per series covering the union of the requested ranges (the trainer fetches a
        whole batch of jobs in one pass, then slices in memory)."""
        spans: dict[tuple[str, str], tuple[int, int]] = {}
        for symbol, tf, start, end in requests:
            lo, hi = spans.get((symbol, tf), (start, end))
            spans[(symbol, tf)] = (min(lo, start), max(hi, end))
        return {key: self.read_range(key[0], key[1], lo, hi) for key, (lo, hi) in spans.items()}

    def last_open_time(self, symbol: str, timeframe: str) -> int | None:
        row = self.query(f"SELECT max(open_time) FROM {LAKE}.candles WHERE symbol = ? AND timeframe = ?",
                         [symbol, timeframe])
        return None if not row or row[0][0] is None else int(row[0][0])

    def count_candles(self, symbol: str | None = None, timeframe: str | None = None) -> int:
        sql = f"SELECT count(*) FROM {LAKE}.candles WHERE (? IS NULL OR symbol = ?) AND (? IS NULL OR timeframe = ?)"
        return int(self.query(sql, [symbol, symbol, timeframe, timeframe])[0][0])

    def candles_after(self, symbol: str, timeframe: str, after: int, limit: int = 100_000) -> list[Candle]:
        rows = self.query(
            f"""SELECT {", ".join(CANDLE_COLS)} FROM {LAKE}.candles WHERE symbol = ? AND timeframe = ?
                AND open_time > ? ORDER BY open_time LIMIT ?""", [symbol, timeframe, after, limit])
        # a TypedDict cannot be built from a dict of runtime keys; CANDLE_COLS are Candle's fields
        return [dict(zip(CANDLE_COLS, r, strict=True)) for r in rows]  # type: ignore[misc]

    # -- pivots, models, quarantine -----------------------------------------------------------
    def append_pivots(self, pivots: Sequence[Pivot]) -> int:
        if not pivots:
            return 0
        cols = ("pivot_id", "symbol", "timeframe", "level", "kind", "pivot_time", "price", "confirmed_at", "strength")
        rows = [tuple(p.get(k) for k in cols) for p in pivots]

        def write() -> int:
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE _piv AS SELECT * FROM {LAKE}.pivots LIMIT 0")
            _insert_values(self.con, "_piv", rows)
            out = self.con.execute(
                f"""INSERT INTO {LAKE}.pivots SELECT DISTINCT ON (i.pivot_id) i.* FROM _piv i
                    WHERE NOT EXISTS (SELECT 1 FROM {LAKE}.pivots p WHERE p.pivot_id = i.pivot_id)""").fetchone()
            return int(out[0]) if out else 0

        return self._in_transaction(write)

    def record_model_version(self, model_key: str, version: int, checkpoint_path: str, trained_jobs: int,
                             metrics: dict[str, float], created_at: int) -> None:
        self._with_retry(lambda: self.con.execute(
            f"INSERT INTO {LAKE}.model_versions VALUES (?,?,?,?,?,?)",
            [model_key, version, checkpoint_path, trained_jobs, json.dumps(metrics), created_at]))

    def latest_model_version(self, model_key: str) -> dict[str, Any] | None:
        rows = self.query(
            f"""SELECT model_key, version, checkpoint_path, trained_jobs, metrics, created_at
                FROM {LAKE}.model_versions WHERE model_key = ? ORDER BY version DESC LIMIT 1""", [model_key])
        if not rows:
            return None
        r = rows[0]
        return {"model_key": r[0], "version": int(r[1]), "checkpoint_path": r[2], "trained_jobs": int(r[3]),
                "metrics": json.loads(r[4] or "{}"), "created_at": int(r[5])}

    def quarantine(self, source: str, reason: str, detail: str, payload: str) -> None:
        self._with_retry(lambda: self.con.execute(
            f"INSERT INTO {LAKE}.quarantine VALUES (?,?,?,?,?)",
            [source, reason, detail, payload, int(time.time() * 1000)]))

    def blobs(self) -> Blobs:
        """Checkpoints and trainer manifests next to the lake: files under a local data path,
        objects under an s3:// one, with the same credentials (reftrain.blobs)."""
        if self._blobs is None:
            self._blobs = blobs_for(self.data_path, self._s3)
        return self._blobs

    def checkpoint_dir(self) -> Path:
        if self.remote:  # a local folder only; on S3 checkpoints go through blobs()
            raise StoreError("no checkpoint folder on an object-store data path: use Store.blobs()")
        path = Path(self.data_path) / "checkpoints"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- maintenance ---------------------------------------------------------------------------
    def compact(self) -> None:
        """Flush inlined rows to Parquet and merge small files (run by ingest every N batches)."""
        self._with_retry(lambda: self.con.execute(f"CALL ducklake_flush_inlined_data('{LAKE}')"))
        self._with_retry(lambda: self.con.execute(f"CALL ducklake_merge_adjacent_files('{LAKE}')"))

    def data_file_count(self, table: str = "candles") -> int:
        rows = self.query(f"SELECT count(*) FROM ducklake_list_files('{LAKE}', '{table}')")
        return int(rows[0][0])


def _column_array(values: list[Any]) -> np.ndarray:
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.int64)
    if all(isinstance(v, (float, int, np.floating)) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.float64)
    return np.asarray(values, dtype=object)  # strings, or a column with NULLs


def _insert_values(con: duckdb.DuckDBPyConnection, table: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert rows by registering them as columnar numpy arrays: 10-20x faster than multi-row
    VALUES with parameters, and executemany() runs one statement per row."""
    if not rows:
        return
    names = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]
    columns = {name: _column_array([row[i] for row in rows]) for i, name in enumerate(names)}
    con.register("_rows", columns)
    try:
        cols = ", ".join(f'"{n}"' for n in names)
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _rows")
    finally:
        con.unregister("_rows")


def _window(symbol: str, timeframe: str, rows: dict[str, Any]) -> Window:
    open_time = np.asarray(rows["open_time"], dtype=np.int64)
    values = np.column_stack([np.asarray(rows[c], dtype=np.float64) for c in COLUMNS]) if len(open_time) \
        else np.empty((0, len(COLUMNS)), dtype=np.float64)
    return Window(symbol, timeframe, open_time, np.ascontiguousarray(values))
