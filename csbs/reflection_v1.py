"""Server reflection v1 beside v1alpha. grpcio-reflection answers only `grpc.reflection.v1alpha`;
`grpc.reflection.v1` is the same protocol, message for message and field for field, under the
new package name (protos/csbs/v1/server_reflection_v1.proto). So each v1 request is passed to the
v1alpha servicer as the same bytes read as v1alpha, and each answer back the same way."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import grpc
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha
from grpc_reflection.v1alpha import reflection_pb2_grpc as v1alpha_grpc

from csbs.v1 import server_reflection_v1_pb2 as v1
from csbs.v1 import server_reflection_v1_pb2_grpc as v1_grpc

SERVICE_NAME = v1.DESCRIPTOR.services_by_name["ServerReflection"].full_name


class ReflectionV1(v1_grpc.ServerReflectionServicer):
    def __init__(self, v1alpha_servicer: reflection.ReflectionServicer) -> None:
        self._v1alpha = v1alpha_servicer

    def ServerReflectionInfo(
        self, request_iterator: Iterable[v1.ServerReflectionRequest], context: grpc.ServicerContext
    ) -> Iterator[v1.ServerReflectionResponse]:
        asked = (
            v1alpha.ServerReflectionRequest.FromString(r.SerializeToString())
            for r in request_iterator
        )
        for answer in self._v1alpha.ServerReflectionInfo(asked, context):
            yield v1.ServerReflectionResponse.FromString(answer.SerializeToString())


def enable_server_reflection(service_names: Iterable[str], server: grpc.Server) -> None:
    """Serves reflection v1alpha and v1 of `service_names` (both reflection services are added
    to the list)."""
    names = (*service_names, reflection.SERVICE_NAME, SERVICE_NAME)
    v1alpha_servicer = reflection.ReflectionServicer(names)
    v1alpha_grpc.add_ServerReflectionServicer_to_server(v1alpha_servicer, server)
    v1_grpc.add_ServerReflectionServicer_to_server(ReflectionV1(v1alpha_servicer), server)
