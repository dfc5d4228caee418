"""The records database: every prediction's record and every label, in SQLite (the workers of one
server) or PostgreSQL (replicas that share it), through SQLAlchemy Core.

Tables (``SCHEMA_VERSION`` in ``nexus_schema``, so a later release can migrate them):

    nexus_predictions    one row per predicted sample: model, version, upload, request id and row,
                         time, the class or value predicted and its confidence, the inputs if kept
    nexus_labels         one row per label received: joined with its prediction when it came, and
                         whether it was right (classifier) or by how much it was off (regressor)
    nexus_label_totals   per upload of a version: labels per (truth, predicted) pair, or the
                         regressor's error sums; what "since upload" reads, and what retention keeps

A version's records are those of one upload (``upload``: its sha256 and time), so a model
deleted and uploaded again under the same id and version starts from nothing even if its old
rows are still there. Everything here raises SQLAlchemy's errors as they are; callers decide.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    case,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    text,
    tuple_,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from nexus.errors import BadInput

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MAX_ERROR = 1e100  # a regressor's error beyond this is not compared: its square would not stay finite in the sums
HOUR = 3600
_CHUNK = 400  # ids per IN (...) of a look-up
_DOUBLE = Float(53)

metadata = MetaData()

schema = Table(
    "nexus_schema", metadata,
    Column("component", String(32), primary_key=True),
    Column("version", Integer, nullable=False),
)



def _prediction_key() -> list[Column]:
    """Which prediction a row is about (the key), and of which upload of which version."""
    return [Column("model_id", String(128), primary_key=True), Column("request_id", String(128), primary_key=True),
            Column("row", Integer, primary_key=True), Column("version", String(128), nullable=False),
            Column("upload", String(16), nullable=False)]


predictions = Table(
    "nexus_predictions", metadata,
    *_prediction_key(),
    Column("created_at", _DOUBLE, nullable=False),  # seconds since the epoch
    Column("predicted", Text),  # the class label (classifier)
    Column("value", _DOUBLE),  # the value (regressor)
    Column("confidence", _DOUBLE),  # the top class's probability (classifier)
    Column("inputs", Text),  # JSON of the row's inputs, with NEXUS_RECORD_INPUTS=1
    Index("nexus_predictions_created", "created_at"),
    sqlite_with_rowid=False,  # SQLite: the rows live in the key's tree, one tree less to write per record
)

labels = Table(
    "nexus_labels", metadata,
    *_prediction_key(),
    Column("predicted_at", _DOUBLE, nullable=False),
    Column("labeled_at", _DOUBLE, nullable=False),
    Column("labeled_hour", BigInteger, nullable=False),  # labeled_at // 3600, for the timeline
    Column("truth", Text, nullable=False),
    Column("predicted", Text),
    Column("correct", Boolean),  # classifier
    Column("error", _DOUBLE),  # regressor: predicted - truth
    Index("nexus_labels_version_time", "model_id", "version", "labeled_at"),
    Index("nexus_labels_time", "labeled_at"),
    sqlite_with_rowid=False,
)

totals = Table(
    "nexus_label_totals", metadata,
    Column("model_id", String(128), primary_key=True),
    Column("version", String(128), primary_key=True),
    Column("upload", String(16), primary_key=True),
    Column("truth", Text, primary_key=True),  # "" for a regressor
    Column("predicted", Text, primary_key=True),  # "" for a regressor
    Column("labels", BigInteger, nullable=False),
    Column("abs_error", _DOUBLE, nullable=False),
    Column("squared_error", _DOUBLE, nullable=False),
)


RECORD_COLUMNS = tuple(column.name for column in predictions.columns)  # a record's values, in this order
_PG_INCOMING = ("CREATE TEMPORARY TABLE IF NOT EXISTS nexus_incoming (LIKE nexus_predictions INCLUDING DEFAULTS) "
                "ON COMMIT DELETE ROWS")
_PG_COPY = f"COPY nexus_incoming ({', '.join(RECORD_COLUMNS)}) FROM STDIN"
_PG_MOVE = (f"INSERT INTO nexus_predictions ({', '.join(RECORD_COLUMNS)}) SELECT {', '.join(RECORD_COLUMNS)} "
            "FROM nexus_incoming ON CONFLICT DO NOTHING")
_COMPARED = or_(labels.c.correct.is_not(None), labels.c.error.is_not(None))  # labels that count in accuracy and error


class SchemaTooNew(RuntimeError):
    """The database was set up by a newer release of the server; this one does not write to it."""


@dataclass(frozen=True)
class Label:
    """One label as the feedback call gave it: which prediction, and the truth (as text, and as a number if it is one)."""

    request_id: str
    row: int
    truth: str
    value: float | None


@dataclass(frozen=True)
class Outcome:
    """What became of one label."""

    outcome: str  # matched, duplicate, unknown, expired
    version: str | None = None
    predicted: Any = None
    correct: bool | None = None
    error: float | None = None


def engine_url(url: str | None, state_dir: Path) -> str:
    """The SQLAlchemy URL of NEXUS_DATABASE_URL (None: SQLite in the state directory)."""
    if url is None:
        return f"sqlite:///{state_dir / 'records.db'}"
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def describe(url: str) -> str:
    """The database a URL names, without its password (for logs and readiness)."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


class Database:
    """The records database of this server, one engine per process (made on first use after a fork)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.postgres = url.startswith("postgresql")
        self._engine: Engine | None = None
        self._pid = 0
        self._ready = False
        self._guard = threading.Lock()
        self._write_sql: str | None = None

    # -- connection and schema ----------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        if self._pid != os.getpid() or self._engine is None:
            with self._guard:
                if self._pid != os.getpid() or self._engine is None:
                    self._engine, self._pid, self._ready = self._connect(), os.getpid(), False
        return self._engine

    def _connect(self) -> Engine:
        if self.postgres:
            return create_engine(self.url, pool_size=2, max_overflow=4, pool_pre_ping=True, pool_recycle=300,
                                 connect_args={"connect_timeout": 3})
        path = self.url.removeprefix("sqlite:///")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(self.url, connect_args={"timeout": 10, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_connection(connection: Any, _record: Any) -> None:
            connection.isolation_level = None  # transactions are begun below, IMMEDIATE
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the workers' writes
            cursor.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint; a crash of the machine may lose the last moments
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection: Any) -> None:
            # A transaction that reads and then writes must hold the write lock from the start, or
            # two workers' would deadlock on upgrading (SQLite answers that with "database is locked").
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    def ensure(self) -> None:
        """Create the tables if they are missing, once per process; refuse a schema from a newer release."""
        engine = self.engine
        if self._ready:
            return
        for attempt in range(3):
            try:
                with engine.begin() as connection:
                    if self.postgres:  # replicas starting together: one creates, the others wait
                        connection.execute(text("SELECT pg_advisory_xact_lock(7007001)"))
                    metadata.create_all(connection, checkfirst=True)
                    found = connection.execute(select(schema.c.version).where(schema.c.component == "records")).scalar()
                    if found is None:
                        connection.execute(schema.insert().values(component="records", version=SCHEMA_VERSION))
                    elif found > SCHEMA_VERSION:
                        raise SchemaTooNew(f"the records schema is version {found}, newer than this server's {SCHEMA_VERSION}")
                break
            except DBAPIError:
                if attempt == 2:
                    raise
                # another worker created a table between our check and our CREATE: look again
        self._ready = True

    # -- writing --------------------------------------------------------------------------------

    def write(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Store prediction records, each a tuple of ``RECORD_COLUMNS`` (a request id a client reused keeps its first record).

        SQLite: one compiled statement through the driver's executemany, with the rows as they
        are (SQLAlchemy's per-row parameter processing would cost more than the insert).
        PostgreSQL: the rows are streamed with COPY into a temporary table of the session, then
        moved with one INSERT ... SELECT that skips the ids already stored (COPY cannot skip
        them itself); per record this costs the server's process under a third of the CPU
        executemany does (measured: 4.9 µs against 17.4).
        """
        self.ensure()
        if self.postgres:
            with self.engine.begin() as connection:
                with connection.connection.driver_connection.cursor() as cursor:  # psycopg's own, for COPY
                    cursor.execute(_PG_INCOMING)
                    with cursor.copy(_PG_COPY) as copy:
                        for row in rows:
                            copy.write_row(row)
                    cursor.execute(_PG_MOVE)
            return
        if self._write_sql is None:
            statement = self._insert(predictions).on_conflict_do_nothing()
            compiled = statement.compile(dialect=type(self.engine.dialect)(paramstyle="qmark"))
            assert tuple(compiled.positiontup) == RECORD_COLUMNS, compiled.positiontup  # type: ignore[arg-type]
            self._write_sql = str(compiled)
        with self.engine.begin() as connection:
            connection.exec_driver_sql(self._write_sql, list(rows))

    def label(self, model_id: str, given: Sequence[Label], now: float, cutoff: float, expired_id: Any,
              uploads: set[str]) -> list[Outcome]:
        """Join each label with its prediction and store the new ones, in one transaction.

        Only predictions of the model's current ``uploads`` count (a deleted one's records may
        linger until the retention). ``cutoff``: predictions older than this are expired;
        ``expired_id(request_id)`` tells whether an id the database does not have is one made
        before the cutoff. A truth that does not fit the version that predicted (text for a
        regressor) raises BadInput, and nothing of the call is stored.
        """
        self.ensure()
        keys = list(dict.fromkeys((label.request_id, label.row) for label in given))
        with self.engine.begin() as connection:
            found = {}
            for chunk in _chunks(keys):
                for row in connection.execute(select(predictions.c.request_id, predictions.c.row, predictions.c.version,
                                                     predictions.c.upload, predictions.c.created_at, predictions.c.predicted,
                                                     predictions.c.value)
                                              .where(predictions.c.model_id == model_id,
                                                     tuple_(predictions.c.request_id, predictions.c.row).in_(chunk))):
                    if row.upload in uploads:
                        found[(row.request_id, row.row)] = row
            labeled = {}
            for chunk in _chunks(keys):
                for row in connection.execute(select(labels.c.request_id, labels.c.row, labels.c.version)
                                              .where(labels.c.model_id == model_id, tuple_(labels.c.request_id, labels.c.row).in_(chunk))):
                    labeled[(row.request_id, row.row)] = row.version
            outcomes: list[Outcome] = []
            new: list[dict[str, Any]] = []
            for index, label in enumerate(given):
                key = (label.request_id, label.row)
                prediction = found.get(key)
                if key in labeled:
                    outcomes.append(Outcome("duplicate", labeled[key]))
                    continue
                if prediction is None:
                    outcomes.append(Outcome("expired" if expired_id(label.request_id) else "unknown"))
                    continue
                if prediction.created_at < cutoff:
                    outcomes.append(Outcome("expired", prediction.version))
                    continue
                outcome = _judge(prediction, label, index)
                outcomes.append(outcome)
                labeled[key] = prediction.version  # a second label for it in this call is a duplicate
                new.append({"model_id": model_id, "request_id": label.request_id, "row": label.row,
                            "version": prediction.version, "upload": prediction.upload, "predicted_at": prediction.created_at,
                            "labeled_at": now, "labeled_hour": int(now // HOUR), "truth": label.truth,
                            "predicted": prediction.predicted, "correct": outcome.correct, "error": outcome.error})
            if new:
                stored = {(row.request_id, row.row) for row in connection.execute(
                    self._insert(labels).on_conflict_do_nothing().returning(labels.c.request_id, labels.c.row), new)}
                kept = []
                for record in new:  # a label another call stored meanwhile (same id, at the same moment) is a duplicate here
                    if (record["request_id"], record["row"]) in stored:
                        kept.append(record)
                    else:
                        index = next(i for i, label in enumerate(given)
                                     if (label.request_id, label.row) == (record["request_id"], record["row"]))
                        outcomes[index] = Outcome("duplicate", record["version"])
                self._add_totals(connection, model_id, kept)
        return outcomes

    def _add_totals(self, connection: Any, model_id: str, kept: Iterable[dict[str, Any]]) -> None:
        cells: dict[tuple[str, str, str, str], list[float]] = {}
        for record in kept:
            if record["correct"] is None and record["error"] is None:
                continue  # nothing was compared: stored (a second label is a duplicate), counted nowhere
            classifier = record["correct"] is not None
            key = (record["version"], record["upload"], record["truth"] if classifier else "",
                   (record["predicted"] or "") if classifier else "")
            cell = cells.setdefault(key, [0, 0.0, 0.0])
            cell[0] += 1
            if record["error"] is not None:
                cell[1] += abs(record["error"])
                cell[2] += record["error"] ** 2
        if not cells:
            return
        insert = self._insert(totals)
        statement = insert.on_conflict_do_update(
            index_elements=[totals.c.model_id, totals.c.version, totals.c.upload, totals.c.truth, totals.c.predicted],
            set_={"labels": totals.c.labels + insert.excluded.labels, "abs_error": totals.c.abs_error + insert.excluded.abs_error,
                  "squared_error": totals.c.squared_error + insert.excluded.squared_error})
        connection.execute(statement, [
            {"model_id": model_id, "version": v, "upload": u, "truth": t, "predicted": p, "labels": n, "abs_error": a, "squared_error": s}
            for (v, u, t, p), (n, a, s) in sorted(cells.items())])

    def prune(self, cutoff: float) -> tuple[int, int]:
        """Delete predictions and labels older than ``cutoff``; return how many of each."""
        self.ensure()
        with self.engine.begin() as connection:
            gone = connection.execute(delete(predictions).where(predictions.c.created_at < cutoff)).rowcount
            unlabeled = connection.execute(delete(labels).where(labels.c.labeled_at < cutoff)).rowcount
        return gone, unlabeled

    def forget(self, model_id: str, uploads: set[str]) -> None:
        """Delete every record of some uploads of a model: they were deleted."""
        self.ensure()
        with self.engine.begin() as connection:
            for table in (predictions, labels, totals):
                connection.execute(delete(table).where(table.c.model_id == model_id, table.c.upload.in_(sorted(uploads))))

    # -- reading --------------------------------------------------------------------------------

    def cells(self, model_id: str, version: str, upload: str, since: float | None) -> list[tuple[str, str, int, float, float]]:
        """Labels of one upload per (truth, predicted), with error sums: since ``since`` (label time), or (None) since upload."""
        self.ensure()
        with self.engine.begin() as connection:
            if since is None:
                query = select(totals.c.truth, totals.c.predicted, totals.c.labels, totals.c.abs_error, totals.c.squared_error).where(
                    totals.c.model_id == model_id, totals.c.version == version, totals.c.upload == upload)
            else:
                classifier = labels.c.correct.is_not(None)
                truth = case((classifier, labels.c.truth), else_="")
                predicted = case((classifier, func.coalesce(labels.c.predicted, "")), else_="")
                query = (select(truth, predicted, func.count(), func.coalesce(func.sum(func.abs(labels.c.error)), 0.0),
                                func.coalesce(func.sum(labels.c.error * labels.c.error), 0.0))
                         .where(labels.c.model_id == model_id, labels.c.version == version, labels.c.upload == upload,
                                labels.c.labeled_at >= since, _COMPARED)
                         .group_by(truth, predicted))
            return [(str(t), str(p), int(n), float(a), float(s)) for t, p, n, a, s in connection.execute(query)]

    def timeline(self, model_id: str, version: str, upload: str, since: float) -> list[tuple[int, int, int, float]]:
        """Per hour with labels since ``since``: (hour, labels, correct, sum of absolute errors), oldest first."""
        self.ensure()
        with self.engine.begin() as connection:
            query = (select(labels.c.labeled_hour, func.count(),
                            func.sum(case((labels.c.correct.is_(True), 1), else_=0)),
                            func.coalesce(func.sum(func.abs(labels.c.error)), 0.0))
                     .where(labels.c.model_id == model_id, labels.c.version == version, labels.c.upload == upload,
                            labels.c.labeled_at >= since, _COMPARED)
                     .group_by(labels.c.labeled_hour).order_by(labels.c.labeled_hour))
            return [(int(h), int(n), int(c or 0), float(a)) for h, n, c, a in connection.execute(query)]

    def close(self) -> None:
        if self._engine is not None and self._pid == os.getpid():
            self._engine.dispose()
        self._engine = None

    def _insert(self, table: Table) -> Any:
        if self.postgres:
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)


def _judge(prediction: Any, label: Label, index: int) -> Outcome:
    if prediction.predicted is not None:  # a classifier's record: the truth is a class, compared as text
        return Outcome("matched", prediction.version, prediction.predicted, correct=prediction.predicted == label.truth)
    if prediction.value is not None:  # a regressor's record: the truth must be a number
        if label.value is None:
            raise BadInput(f"item {index}: '{label.request_id}' was predicted by version '{prediction.version}', a regressor: "
                           f"'truth' must be a number, not text")
        error = prediction.value - label.value
        return Outcome("matched", prediction.version, prediction.value, error=error if abs(error) <= MAX_ERROR else None)
    return Outcome("matched", prediction.version, None)  # the answer held nothing to compare with: stored, counted in no metric


def _chunks(keys: list[tuple[str, int]]) -> Iterable[list[tuple[str, int]]]:
    for start in range(0, len(keys), _CHUNK):
        yield keys[start:start + _CHUNK]
