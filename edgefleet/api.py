"""The JSON API (device protocol v1 and the operator API), with its OpenAPI schema at /api/v1/docs."""

from ninja import NinjaAPI

from fleet.api import router as fleet_router
from ota.api import router as ota_router
from rollout.api import router as rollout_router
from telemetry.api import router as telemetry_router

api = NinjaAPI(
    title="EdgeFleet API",
    version="1",
    urls_namespace="api",
    description="Device protocol v1 (enroll, manifest, artifacts, events, telemetry) and the operator API.",
)
api.add_router("", fleet_router)
api.add_router("", ota_router)
api.add_router("", telemetry_router)
api.add_router("", rollout_router)
