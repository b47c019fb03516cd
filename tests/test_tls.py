"""TLS as on a real cluster: clients verify the local cluster's certificate (by the CA bundle
``cluster env`` names), and containers with API access verify it by the bundle crunch-run mounts
at /etc/arvados/ca-certificates.crt, never by switching verification off."""
from __future__ import annotations

import socket
import ssl
from pathlib import Path

import arvados
import arvados.collection
import arvados.events
import pytest

from conftest import PYTHON_IMAGE
from e2e_util import create_request, request_body, wait_final
from toil_arvados.localcluster import tls


def _handshake(api_host: str, ctx: ssl.SSLContext) -> None:
    host, port = api_host.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=host):
            pass


def test_the_bundle_verifies_the_cluster_and_nothing_else_does(cluster, cluster_env) -> None:
    assert "ARVADOS_API_HOST_INSECURE" not in cluster_env
    _handshake(cluster.api_host, ssl.create_default_context(cafile=cluster_env["SSL_CERT_FILE"]))
    # The host's CAs alone do not trust it: the cluster's CA is what makes it trusted.
    system = next((p for p in tls.SYSTEM_BUNDLES if Path(p).exists()), None)
    bare = ssl.create_default_context(cafile=system) if system else ssl.create_default_context()
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(cluster.api_host, bare)


def test_the_bundle_keeps_the_hosts_trusted_cas(cluster_env) -> None:
    """SSL_CERT_FILE replaces the default store for every TLS client of the shell, so the bundle
    holds the host's CAs too (pip and the rest keep working after `eval $(cluster env)`)."""
    bundle_file = Path(cluster_env["SSL_CERT_FILE"])
    bundle, ca = bundle_file.read_bytes(), (bundle_file.parent / "ca.pem").read_bytes()
    system = next((Path(p).read_bytes() for p in tls.SYSTEM_BUNDLES if Path(p).exists()), b"")
    assert bundle.endswith(ca) and system.strip() in bundle
    assert len(bundle) >= len(system) + len(ca)


def test_sdk_clients_verify_without_insecure(cluster_env) -> None:
    """API, Keep and the websocket, each with verification on (the SDK's default)."""
    api = arvados.api("v1", host=cluster_env["ARVADOS_API_HOST"], token=cluster_env["ARVADOS_API_TOKEN"],
                      insecure=False, num_retries=0)
    assert api.users().current().execute()["is_admin"]
    coll = arvados.collection.Collection(api_client=api)
    with coll.open("hello.txt", "w") as f:
        f.write("hello\n")
    coll.save_new(name="tls check")
    assert arvados.collection.CollectionReader(coll.manifest_locator(), api_client=api).open("hello.txt").read() == "hello\n"
    # No poll fallback: a websocket that cannot verify the cluster raises here.
    ws = arvados.events.subscribe(api, [["object_uuid", "=", coll.manifest_locator()]], lambda _event: None,
                                  poll_fallback=False)
    ws.close()


_PROBE = """
import json, os, ssl, urllib.request
ctx = ssl.create_default_context(cafile="/etc/arvados/ca-certificates.crt")
req = urllib.request.Request("https://" + os.environ["ARVADOS_API_HOST"] + "/arvados/v1/users/current",
                             headers={"Authorization": "Bearer " + os.environ["ARVADOS_API_TOKEN"]})
with urllib.request.urlopen(req, context=ctx) as r:
    user = json.load(r)["uuid"]
print(json.dumps({"user": user, "insecure": os.environ.get("ARVADOS_API_HOST_INSECURE")}))
"""


def test_a_container_with_api_access_verifies_the_cluster_by_the_mounted_bundle(api, cluster_env) -> None:
    body = request_body(["sh", "-c", f"python3 -c '{_PROBE}' > probe.json"], PYTHON_IMAGE, use_existing=False,
                        runtime_constraints={"vcpus": 1, "ram": 256 << 20, "API": True})
    cr = wait_final(api, create_request(api, body)["uuid"])
    c = api.containers().get(uuid=cr["container_uuid"]).execute()
    assert (c["state"], c["exit_code"]) == ("Complete", 0)
    out = arvados.collection.CollectionReader(cr["output_uuid"], api_client=api).open("probe.json").read()
    assert '"insecure": null' in out and '"user": "' in out


def test_a_container_without_api_access_gets_no_bundle(api) -> None:
    body = request_body(["sh", "-c", "test ! -e /etc/arvados/ca-certificates.crt"], PYTHON_IMAGE, use_existing=False)
    cr = wait_final(api, create_request(api, body)["uuid"])
    assert api.containers().get(uuid=cr["container_uuid"]).execute()["exit_code"] == 0


def test_certificates_are_made_once_and_the_ca_key_is_never_written(tmp_path: Path) -> None:
    first = tls.ensure_certificates(tmp_path, "127.0.0.1")
    before = {p: p.read_bytes() for p in (first.cert, first.key, first.ca, first.bundle)}
    again = tls.ensure_certificates(tmp_path, "127.0.0.1")
    assert {p: p.read_bytes() for p in (again.cert, again.key, again.ca, again.bundle)} == before
    assert first.key.stat().st_mode & 0o077 == 0
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == ["ca-certificates.crt", "ca.pem", "cert.pem", "key.pem"]
