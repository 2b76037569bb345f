import marshmallow as ma


class HealthSchema(ma.Schema):
    status = ma.fields.String(metadata={"description": "'ok' while the process serves requests"})


class EditionSchema(ma.Schema):
    license = ma.fields.String(metadata={"description": "timescaledb.license: 'timescale' (Community) or 'apache'"})
    timescaledb_version = ma.fields.String(allow_none=True)
    server_version = ma.fields.String()
    embedded = ma.fields.Boolean(metadata={"description": "true on the embedded PGlite engine"})
    continuous_aggregates = ma.fields.List(ma.fields.String())


class OverloadSchema(ma.Schema):
    shedding = ma.fields.Boolean(
        metadata={"description": "this worker answered a request 503 (admission control) in the last 10 s"}
    )
    queued = ma.fields.Integer(metadata={"description": "requests waiting for a thread of this worker"})
    queue_standing_ms = ma.fields.Integer(
        metadata={
            "description": "how long this worker's queue has stood (admission control's short ingest bound; 0: not)"
        }
    )
    shed_by_this_worker = ma.fields.Integer(metadata={"description": "requests this worker shed since it started"})
    retry_after_base_s = ma.fields.Integer(
        allow_none=True,
        metadata={"description": "this worker's Retry-After for a shed request is drawn from [base, 3 x base] s"},
    )


class ReadinessSchema(ma.Schema):
    ready = ma.fields.Boolean()
    database = ma.fields.String(metadata={"description": "'ok' or why the database cannot be used"})
    schema_revision = ma.fields.String(allow_none=True)
    schema_head = ma.fields.String()
    edition = ma.fields.Nested(EditionSchema, allow_none=True)
    overload = ma.fields.Nested(
        OverloadSchema,
        metadata={
            "description": "load shedding as the worker that answered sees it (gunicorn only; a node that sheds"
            " stays ready)"
        },
    )
