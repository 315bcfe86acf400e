"""HTTPS through the pinned transport: the TCP connection goes to the validated address while
SNI and certificate verification use the URL's host name (loopback server, private CA)."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.errors import ImageFetchFailed
from gateway.guard import ImageGuard
from tests.unit.guard.conftest import StaticResolver, assert_clean, image_bytes, ref, respond

MakeGuard = Callable[..., ImageGuard]
PNG = image_bytes((96, 64))

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA and a certificate for images.test signed by it (EC keys: fast)."""
    d = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=guard test CA", cwd=d)  # fmt: skip
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=images.test", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=DNS:images.test\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2",
             "-extfile", "san.ext", cwd=d)  # fmt: skip
    return d


async def test_tls_uses_the_host_name_while_connecting_to_the_pinned_address(
    make_guard: MakeGuard, pki: Path
) -> None:
    server_names: list[str | None] = []
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki / "server.pem", pki / "server.key")

    def record_sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        server_names.append(name)

    server_ctx.sni_callback = record_sni
    hosts: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            lines = head.split("\r\n")
            hosts.extend(line[5:].strip() for line in lines if line.lower().startswith("host:"))
            await respond(writer, 200, [("Content-Type", "image/png")], PNG)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    resolver = StaticResolver({"images.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    guard = make_guard(resolver=resolver, ports=[port], ssl_context=client_ctx)
    try:
        (prepared,) = await guard.prepare([ref(f"https://images.test:{port}/cat.png")])
        assert prepared.report.original_size == (96, 64)
        assert server_names == ["images.test"]
        assert hosts == [f"images.test:{port}"]
        # Same address, a name the certificate does not cover: verification must fail.
        with pytest.raises(ImageFetchFailed) as info:
            await guard.prepare([ref(f"https://other.test:{port}/cat.png")])
        assert_clean(info.value)
    finally:
        server.close()
        await server.wait_closed()
