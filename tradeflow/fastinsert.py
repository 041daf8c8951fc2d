"""Insert one model row without the ORM's per-call query compilation (the webhook hot path).

``Model.objects.create`` builds an ``InsertQuery`` and compiles it to SQL on every call (about 0.15 ms of CPU
per row here). ``insert`` does what that compiler does for a plain single-row insert (every local concrete
field's ``pre_save`` and ``get_db_prep_save``, so defaults, ``auto_now_add``, JSON, UUID and Decimal adaptation
are the ORM's own) with SQL built once per model and database vendor. It is portable (PostgreSQL and SQLite);
like ``bulk_create`` it sends no ``pre_save``/``post_save`` signals, so use it only for models without receivers.
"""

from __future__ import annotations

from contextlib import nullcontext

from django.db import connections, router, transaction
from django.db.models import Model

_sql: dict[tuple[type, str], tuple[str, list, bool]] = {}


def _statement(model: type[Model], connection) -> tuple[str, list, bool]:
    key = (model, connection.vendor)
    found = _sql.get(key)
    if found is None:
        meta = model._meta
        auto = meta.auto_field
        fields = [f for f in meta.local_concrete_fields if f is not auto]
        qn = connection.ops.quote_name
        returning = auto is not None and connection.features.can_return_columns_from_insert
        columns, values = ", ".join(qn(f.column) for f in fields), ", ".join(["%s"] * len(fields))
        sql = f"INSERT INTO {qn(meta.db_table)} ({columns}) VALUES ({values})"  # noqa: S608 - model metadata only
        if returning:
            sql += f" RETURNING {qn(auto.column)}"
        found = _sql[key] = (sql, fields, returning)
    return found


def insert(model: type[Model], **values) -> Model:
    """``model.objects.create(**values)`` for the hot path: one INSERT, the instance back with its pk."""
    obj = model(**values)
    using = router.db_for_write(model, instance=obj)
    return _insert_object(obj, connections[using], using)


def _insert_object(obj: Model, connection, using: str) -> Model:
    model = type(obj)
    sql, fields, returning = _statement(model, connection)
    params = [f.get_db_prep_save(f.pre_save(obj, True), connection=connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        auto = model._meta.auto_field
        if auto is not None:
            if returning:
                pk = cursor.fetchone()[0]
            else:  # pragma: no cover - SQLite older than 3.35
                pk = connection.ops.last_insert_id(cursor, model._meta.db_table, auto.column)
            setattr(obj, auto.attname, pk)
    obj._state.adding = False
    obj._state.db = using
    return obj


def savepoint_if_nested(using: str | None = None):
    """``transaction.atomic()`` around one statement whose ``IntegrityError`` the caller catches, but only when a
    transaction is already open (a savepoint keeps it usable after the error). In autocommit mode the statement
    is atomic by itself and a failed one leaves the connection usable, so BEGIN and COMMIT would be two round
    trips for nothing."""
    if transaction.get_connection(using).in_atomic_block:
        return transaction.atomic(using=using)
    return nullcontext()


def insert_together(*rows: tuple[type[Model], dict], using: str = "default") -> list[Model]:
    """Insert several rows (each of its own model) all or nothing; the instances back with their pks."""
    return [objs[0] for objs in insert_many([(model, [values]) for model, values in rows], using=using)]


def insert_many(groups: list[tuple[type[Model], list[dict]]], using: str = "default",
                savepoint: bool = True) -> list[list[Model]]:
    """Insert the rows of several models all or nothing; per group, the instances back with their pks.

    PostgreSQL: one statement (each group a multi-row INSERT in a data-modifying CTE), so one round trip and, in
    autocommit, its own transaction: it commits whole or fails whole (an ``IntegrityError`` stores none of the rows).
    The pks come back in the order the rows were given, as ``bulk_create`` relies on ``INSERT … RETURNING`` giving
    them. Foreign keys between the rows must be known up front (e.g. a client-made UUID): no CTE reads another's
    output. Elsewhere (SQLite): the same inserts one by one inside ``transaction.atomic()``.

    Inside a transaction the statement runs in a savepoint, so a caller may catch its ``IntegrityError`` and go on;
    ``savepoint=False`` for rows that cannot conflict saves its two round trips.
    """
    return insert_objects([[model(**values) for values in rows] for model, rows in groups], using=using,
                          savepoint=savepoint)


def insert_objects(groups: list[list[Model]], using: str = "default", savepoint: bool = True) -> list[list[Model]]:
    """``insert_many`` for instances already made (``bulk_create`` of each group, without its query compilation,
    in one statement on PostgreSQL). Like ``bulk_create`` it sends no signals; ``pre_save`` runs (``auto_now_add``)."""
    connection = connections[using]
    if connection.vendor != "postgresql":  # SQLite: bulk_create, a statement per group (one row: one plain INSERT)
        if sum(len(objs) for objs in groups) == 1:
            _insert_object(next(objs[0] for objs in groups if objs), connection, using)
            return groups
        with transaction.atomic(using=using):
            for objs in groups:
                if objs:
                    type(objs[0]).objects.using(using).bulk_create(objs)
        return groups
    with savepoint_if_nested(using) if savepoint else nullcontext():  # a failure must not poison a transaction
        _insert_in_one_statement(groups, connection, using)
    return groups


UNNEST_ROWS = 16  # from this many rows on, a statement sends column arrays instead of VALUES rows


def _unnest_types(fields, connection) -> list[str]:
    """Each field's array type for ``UNNEST`` (as Django's bulk_create on PostgreSQL: without type parameters, so
    ``varchar(16)[]`` is ``varchar[]`` and nothing is truncated on the way)."""
    return [f"(%s)::{f.db_type(connection).split('(')[0]}[]" for f in fields]


def _prepared(objs: list[Model], fields, connection) -> list[list]:
    """The rows' values as the ORM's insert prepares them (``pre_save`` then ``get_db_prep_save``), row by row."""
    return [[f.get_db_prep_save(f.pre_save(obj, True), connection=connection) for f in fields] for obj in objs]


def _transposed(rows: list[list]) -> list[list]:
    """Rows of values as column arrays (one ``UNNEST`` parameter each)."""
    return [list(column) for column in zip(*rows, strict=True)]


def _insert_in_one_statement(groups: list[list[Model]], connection, using: str) -> None:
    """One statement for every group: ``INSERT … RETURNING pk`` per group, as a data-modifying CTE. A group of
    ``UNNEST_ROWS`` rows or more is sent as column arrays (``SELECT * FROM UNNEST(…)``), a smaller one as ``VALUES``:
    psycopg parses a statement of over 4 KB or 50 parameters again on every call (about 0.12 ms of CPU per row of
    ``VALUES`` here), while an array parameter costs more to adapt than a few scalars (0.9 against 0.4 ms for a
    row, 8.8 against 11.8 ms for 100 log rows)."""
    qn = connection.ops.quote_name
    parts, params, arrays = [], [], []
    for n, objs in enumerate(groups):
        if not objs:
            continue
        model = type(objs[0])
        sql, fields, _ = _statement(model, connection)
        head, _, values = sql.partition(" RETURNING ")[0].partition(" VALUES ")
        pk = qn(model._meta.pk.column)
        if len(objs) >= UNNEST_ROWS:
            unnest = ", ".join(_unnest_types(fields, connection))
            parts.append(f"r{n} AS ({head} SELECT * FROM UNNEST({unnest}) RETURNING {pk})")  # noqa: S608 - metadata
            params.extend(_transposed(_prepared(objs, fields, connection)))
        else:
            parts.append(f"r{n} AS ({head} VALUES {', '.join([values] * len(objs))} RETURNING {pk})")
            params.extend(value for row in _prepared(objs, fields, connection) for value in row)
        arrays.append(f"ARRAY(SELECT {pk} FROM r{n})")  # noqa: S608 - generated names only
    if not parts:
        return
    with connection.cursor() as cursor:
        cursor.execute(f"WITH {', '.join(parts)} SELECT {', '.join(arrays)}", params)
        returned = iter(cursor.fetchone())
    for objs in groups:
        if not objs:
            continue
        auto = objs[0]._meta.auto_field
        for obj, pk in zip(objs, next(returned), strict=True):
            if auto is not None:
                setattr(obj, auto.attname, pk)
            obj._state.adding = False
            obj._state.db = using


def update_many(objs: list[Model], fields: list[str], *, chunk: int = 1000, where: dict | None = None) -> set | None:
    """``Model.objects.bulk_update(objs, fields)`` without its per-object ``CASE WHEN`` expressions: on PostgreSQL one
    ``UPDATE … FROM (VALUES …)`` per ``chunk`` rows (column arrays, ``UNNEST``, from ``UNNEST_ROWS`` rows on, as
    ``_insert_in_one_statement``), each value cast to its column's type and prepared as the ORM
    prepares it for saving (``get_db_prep_save``: JSON, Decimal, aware datetimes). Django's bulk_update built and
    resolved an expression per object and field: 0.3 s of CPU for 100 rows × 7 fields. Other databases: bulk_update.
    Like bulk_update it calls no ``save`` and sends no signals; ``auto_now`` fields are the caller's to set.

    ``where``: update only the rows whose current values are these (``{"status": "running"}``), and return the pks
    updated: on PostgreSQL in the same statement (``RETURNING``); elsewhere the rows are locked and read first."""
    if not objs:
        return set() if where is not None else None
    model = type(objs[0])
    connection = connections[router.db_for_write(model)]
    if connection.vendor != "postgresql":
        if where is None:
            model.objects.bulk_update(objs, fields)
            return None
        with transaction.atomic(using=connection.alias, savepoint=False):
            held = set(model.objects.select_for_update().filter(pk__in=[o.pk for o in objs], **where)
                       .values_list("pk", flat=True))
            model.objects.bulk_update([o for o in objs if o.pk in held], fields)
        return held
    meta, qn = model._meta, connection.ops.quote_name
    columns = [meta.pk, *(meta.get_field(name) for name in fields)]
    assignments = ", ".join(f"{qn(f.column)} = v.{qn(f.column)}" for f in columns[1:])
    names = ", ".join(qn(f.column) for f in columns)
    pk = qn(meta.pk.column)
    conditions = [(meta.get_field(name), value) for name, value in (where or {}).items()]
    condition = "".join(f" AND t.{qn(f.column)} = %s" for f, _ in conditions)
    returning = f" RETURNING t.{pk}" if where is not None else ""
    row = "(" + ", ".join(f"%s::{f.db_type(connection)}" for f in columns) + ")"
    unnest = ", ".join(_unnest_types(columns, connection))
    updated = set()
    with connection.cursor() as cursor:
        for start in range(0, len(objs), chunk):
            part = objs[start:start + chunk]
            values = [[f.get_db_prep_save(getattr(obj, f.attname), connection=connection) for f in columns]
                      for obj in part]
            if len(part) >= UNNEST_ROWS:  # column arrays, as _insert_in_one_statement
                source, params = f"UNNEST({unnest})", _transposed(values)
            else:
                source, params = f"(VALUES {', '.join([row] * len(part))})", [v for r in values for v in r]
            cursor.execute(f"UPDATE {qn(meta.db_table)} AS t SET {assignments} FROM {source} "  # noqa: S608 - metadata
                           f"AS v({names}) WHERE t.{pk} = v.{pk}{condition}{returning}",
                           params + [f.get_db_prep_value(value, connection=connection) for f, value in conditions])
            if where is not None:
                updated |= {r[0] for r in cursor.fetchall()}
    return updated if where is not None else None
