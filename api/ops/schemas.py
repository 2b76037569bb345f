import marshmallow as ma


class HealthSchema(ma.Schema):
    status = ma.fields.String(metadata={"description": "'ok' while the process serves requests"})


class EditionSchema(ma.Schema):
    license = ma.fields.String(metadata={"description": "timescaledb.license: 'timescale' (Community) or 'apache'"})
    timescaledb_version = ma.fields.String(allow_none=True)
    server_version = ma.fields.String()
    embedded = ma.fields.Boolean(metadata={"description": "true on the embedded PGlite engine"})
    continuous_aggregates = ma.fields.List(ma.fields.String())


class ReadinessSchema(ma.Schema):
    ready = ma.fields.Boolean()
    database = ma.fields.String(metadata={"description": "'ok' or why the database cannot be used"})
    schema_revision = ma.fields.String(allow_none=True)
    schema_head = ma.fields.String()
    edition = ma.fields.Nested(EditionSchema, allow_none=True)
