"""Asks a gRPC server for its health with grpcio's own health client (grpcio-health-checking),
not ctcluster's code, until the answer is the expected one or time runs out.

    python health_check.py HOST:PORT SERVICE EXPECTED WAIT_SECONDS [CA_PEM]

SERVICE is a name of grpc.health.v1 ('' for the server as a whole); EXPECTED is SERVING,
NOT_SERVING or SERVICE_UNKNOWN. With CA_PEM the channel is TLS, checked against that CA.
Prints the answer and how long it took to come; exits 1 if it never did.
"""

import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address, service, credentials):
    if credentials is None:
        channel = grpc.insecure_channel(address)
    else:
        channel = grpc.secure_channel(address, credentials)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            return "error: " + e.code().name


def main():
    address, service, expected, wait = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    credentials = None
    if len(sys.argv) > 5:
        with open(sys.argv[5], "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    start = time.monotonic()
    while True:
        status = check(address, service, credentials)
        took = time.monotonic() - start
        if status == expected:
            print(f"{address} {service!r}: {status} after {took:.2f} s")
            return 0
        if took > wait:
            print(f"{address} {service!r}: {status}, expected {expected} within {wait} s")
            return 1
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
