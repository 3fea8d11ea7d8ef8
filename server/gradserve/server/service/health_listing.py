"""The standard health service with its ``List`` method, which grpc's servicer lacks.

``List`` (part of grpc.health.v1 since 2024) returns every service name the server reports
on with its status; ``gradserve health --service NAME`` calls it when NAME is unknown, so
the error lists the names that exist.
"""

import grpc
from grpc_health.v1 import health, health_pb2


class ListingHealthServicer(health.aio.HealthServicer):
    """``health.aio.HealthServicer`` that remembers the names it was given, to list them."""

    def __init__(self) -> None:
        super().__init__()
        self._names = {""}  # the whole server, SERVING from the start

    async def set(self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus):
        self._names.add(service)
        await super().set(service, status)

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        statuses = {}
        for name in sorted(self._names):
            check = health_pb2.HealthCheckRequest(service=name)
            statuses[name] = await self.Check(check, context)
        return health_pb2.HealthListResponse(statuses=statuses)
