"""``field__any=[...]``: membership with the whole list as one SQL parameter, so the SQL does not change with the
list's length and can be compiled once (``tradeflow.precompiled``, which imports this module).
Registered on every field and foreign key."""

from __future__ import annotations

import json

from django.core.exceptions import EmptyResultSet
from django.db.models import Field, ForeignObject, Lookup
from django.db.models.lookups import FieldGetDbPrepValueIterableMixin


class AnyOf(FieldGetDbPrepValueIterableMixin, Lookup):
    """PostgreSQL: ``field = ANY(%s)`` with an array parameter. Elsewhere (SQLite): ``field IN (SELECT value FROM
    json_each(%s))`` with the values as a JSON array. Values are prepared as ``__in`` prepares them."""

    lookup_name = "any"

    def as_sql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        if not self.rhs_is_direct_value():
            raise ValueError("__any takes a list of values")
        values = [self.lhs.output_field.get_db_prep_value(v, connection, prepared=True) for v in self.rhs]
        if not values:
            raise EmptyResultSet
        if connection.vendor == "postgresql":
            return f"{lhs} = ANY(%s)", [*lhs_params, values]
        return (f"{lhs} IN (SELECT value FROM json_each(%s))",  # noqa: S608 - lhs is a compiled column
                [*lhs_params, json.dumps(values, default=str)])


Field.register_lookup(AnyOf)
ForeignObject.register_lookup(AnyOf)  # foreign keys keep their own lookups (``user_id__any``)
