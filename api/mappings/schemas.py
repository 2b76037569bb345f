"""Vehicle -> meter mapping schemas; JSON names are camelCase, as in the API contract."""

import marshmallow as ma

from api.fields import BaseSchema, UtcDateTime, device_id


class NewMappingSchema(BaseSchema):
    vehicle_id = device_id(data_key="vehicleId", required=True)
    meter_id = device_id(data_key="meterId", required=True)
    valid_from = UtcDateTime(
        data_key="validFrom",
        load_default=None,
        metadata={
            "description": "When the vehicle starts drawing from this meter (ISO 8601 with offset; default: now)."
            " Must be after the start of the mapping in effect and after the end of every stored one."
        },
    )


class MappingSchema(ma.Schema):
    vehicle_id = ma.fields.String(data_key="vehicleId")
    meter_id = ma.fields.String(data_key="meterId")
    valid_from = UtcDateTime(data_key="validFrom", metadata={"description": "Start of validity (inclusive)"})
    valid_to = UtcDateTime(
        data_key="validTo", allow_none=True, metadata={"description": "End of validity (exclusive); null: in effect"}
    )
    created_at = UtcDateTime(data_key="createdAt", metadata={"description": "When this mapping was recorded"})


class MappingQueryArgsSchema(ma.Schema):
    vehicle_id = device_id(data_key="vehicleId", metadata={"description": "Only this vehicle's mappings"})
    meter_id = device_id(data_key="meterId", metadata={"description": "Only mappings to this meter"})
    at = UtcDateTime(metadata={"description": "Only mappings in effect at this instant (ISO 8601 with offset)"})
