"""Lists what a gRPC server offers through server reflection, with Python's grpcio-reflection (a
client not written in Rust, as README § Operations promises): every service name, then for each
service named on the command line its methods.

    python3 reflection_list.py HOST:PORT [SERVICE ...]
"""
import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> None:
    channel = grpc.insecure_channel(sys.argv[1])
    database = ProtoReflectionDescriptorDatabase(channel)
    for service in database.get_services():
        print("service", service)
    pool = DescriptorPool(database)
    for name in sys.argv[2:]:
        service = pool.FindServiceByName(name)
        print("methods", name, " ".join(m.name for m in service.methods))


if __name__ == "__main__":
    main()
