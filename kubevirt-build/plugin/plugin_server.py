#!/usr/bin/env python3
"""Route (b), KubeVirt >= 1.9: the debug hook as a Plugin domain-hook sidecar.

virt-launcher calls ``kubevirt.hooks.plugins.v1alpha1.DomainHookService/
MutateDomain`` over a unix socket under /var/run/kubevirt-plugin/<plugin>/
(pkg/hooks/plugins/v1alpha1/api.proto, pkg/virt-launcher/virtwrap/plugins/
sidecar.go); this server answers with ``debug_hook.add_debug_args`` applied.

The two messages are encoded by hand (a few protobuf fields), so the image
needs only grpcio, not generated code:

    MutateDomainRequest  { string domain_type = 1; bytes domain = 2;
                           bytes vmi = 3; SidecarContext sidecar_context = 4; }
    MutateDomainResponse { bytes domain = 1; }
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "hook"))

import debug_hook

SERVICE = "kubevirt.hooks.plugins.v1alpha1.DomainHookService"
METHOD = f"/{SERVICE}/MutateDomain"
DEFAULT_SOCKET = "/var/run/kubevirt-plugin/kubevirt-spawner-debug/hook.sock"

log = logging.getLogger("kubevirt-spawner-debug-plugin")


# -- protobuf wire format (just what the two messages use) -----------------
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def decode_fields(buf: bytes) -> dict[int, bytes]:
    """Length-delimited fields by number (the last one wins); others skipped."""
    fields: dict[int, bytes] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated field")
            fields[number] = buf[pos : pos + length]
            pos += length
        elif wire == 0:
            _, pos = _read_varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return fields


def encode_bytes_field(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value if value else b""


def decode_request(data: bytes) -> dict:
    f = decode_fields(data)
    ctx = decode_fields(f.get(4, b""))
    return {
        "domain_type": f.get(1, b"").decode(),
        "domain": f.get(2, b""),
        "vmi": f.get(3, b""),
        "invocation_context": ctx.get(1, b"").decode(),
    }


def encode_response(domain: bytes) -> bytes:
    return encode_bytes_field(1, domain)


# -- the service -------------------------------------------------------------
def mutate_domain(request: dict, context) -> bytes:
    try:
        out = debug_hook.add_debug_args(
            request["domain"].decode(), gdb=os.environ.get("KVS_GDB", debug_hook.DEFAULT_GDB)
        )
    except debug_hook.HookError as e:
        import grpc

        log.error("MutateDomain: %s", e)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    log.info(
        "MutateDomain (%s): added %s",
        request["invocation_context"] or "Boot",
        debug_hook.debug_args(request["domain"].decode()) or "nothing (already there)",
    )
    return out.encode()


def make_server(socket_path: str):
    from concurrent import futures

    import grpc

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "MutateDomain": grpc.unary_unary_rpc_method_handler(
                mutate_domain,
                request_deserializer=decode_request,
                response_serializer=encode_response,
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    Path(socket_path).parent.mkdir(parents=True, exist_ok=True)
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    server.add_insecure_port(f"unix:{socket_path}")
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="kubevirt-spawner debug-mode Plugin sidecar")
    parser.add_argument("--socket", default=DEFAULT_SOCKET, help="unix socket to serve on")
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    server = make_server(opts.socket)
    server.start()
    log.info("serving %s on %s", METHOD, opts.socket)
    signal.signal(signal.SIGTERM, lambda *_: server.stop(5))
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
