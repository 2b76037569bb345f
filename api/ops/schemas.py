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


class ReplicaSchema(ma.Schema):
    usable = ma.fields.Boolean(metadata={"description": "reads go to the replica (DATABASE_READ_URL)"})
    reason = ma.fields.String(metadata={"description": "'ok', or why the replica is not read from"})
    lag_s = ma.fields.Float(allow_none=True, metadata={"description": "its replay lag at the last probe, seconds"})
    reads_go_to = ma.fields.String(metadata={"description": "'replica', 'primary' or 'nowhere (503)'"})
    max_lag_s = ma.fields.Float(metadata={"description": "FLEET_READ_REPLICA_MAX_LAG_S"})


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
    replica = ma.fields.Nested(
        ReplicaSchema,
        allow_none=True,
        metadata={
            "description": "the read replica as this worker sees it; null without DATABASE_READ_URL. A node whose"
            " replica is down stays ready: its reads fall back to the primary or answer 503"
            " (FLEET_READ_REPLICA_FALLBACK)"
        },
    )
