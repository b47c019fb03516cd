"""Users isolated as in Arvados: what a second, non-admin user must be refused.

Each test tries one attack as a user the admin created (through the admin API, as on Arvados),
through the real SDK against the session's local cluster, and checks it is refused and had no
effect. A few checks of server internals (token comparison, start-up after a crash) run without
a server. docs/security.md lists the rules and the test that shows each.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import socket
import ssl
from pathlib import Path
from types import SimpleNamespace

import arvados
import arvados.collection
import arvados.errors
import pytest

from e2e_util import create_request, grant as _grant, make_user as _make_user, refused as _raises, \
    request_body, user_client, wait_final
from toil_arvados.images.keep import repo_tag


def _client(cluster_env: dict[str, str], token: str):
    return user_client(cluster_env, token)


@pytest.fixture(scope="module")
def image_pdh(api, test_image, alice, mallory) -> str:
    """The test image, shared by the admin with both users (its links and collection)."""
    links = api.links().list(filters=[["link_class", "=", "docker_image_repo+tag"],
                                      ["name", "=", repo_tag(test_image)]]).execute()["items"]
    pdh = None
    for link in links:
        coll = api.collections().get(uuid=link["head_uuid"]).execute()
        pdh = pdh or coll["portable_data_hash"]
        for user, _ in (alice, mallory):
            _grant(api, user["uuid"], link["uuid"])
            _grant(api, user["uuid"], coll["uuid"])
    assert pdh
    return pdh


def _private_collection(api, project: str, text: str = "admin's secret\n") -> dict:
    coll = arvados.collection.Collection(api_client=api)
    with coll.open("a.txt", "w") as f:
        f.write(text)
    coll.save_new(name=f"private {secrets.token_hex(3)}", owner_uuid=project)
    return api.collections().get(uuid=coll.manifest_locator()).execute()


def _own_project(client) -> str:
    return client.groups().create(body={"group": {"name": f"own {secrets.token_hex(4)}",
                                                  "group_class": "project"}}).execute()["uuid"]


# 1 -------------------------------------------------------------------------------------------

def test_link_update_cannot_create_or_widen_permission(api, cluster_env, project, alice, mallory) -> None:
    m_user, m = mallory
    a_user, _ = alice
    _grant(api, m_user["uuid"], project)  # Mallory may read the admin's project
    # A tag link on it is harmless (anyone may tag what they can read) ...
    tag = m.links().create(body={"link": {"link_class": "tag", "name": "x", "head_uuid": project,
                                          "tail_uuid": m_user["uuid"]}}).execute()
    # ... but turning it into a grant is checked as a grant would be on create.
    _raises(m.links().update(uuid=tag["uuid"], body={"link": {"link_class": "permission", "name": "can_manage"}}),
            (403, 422))
    # A grant on her own project cannot be moved onto the admin's project, nor to herself.
    own = _own_project(m)
    grant = _grant(m, a_user["uuid"], own)
    _raises(m.links().update(uuid=grant["uuid"], body={"link": {"head_uuid": project}}), (403, 422))
    _raises(m.links().update(uuid=grant["uuid"], body={"link": {"tail_uuid": m_user["uuid"]}}), (403, 422))
    # Changing the level of her own grant stays possible.
    assert m.links().update(uuid=grant["uuid"], body={"link": {"name": "can_write"}}).execute()["name"] == "can_write"
    _raises(m.groups().update(uuid=project, body={"group": {"name": "taken"}}), (403,))
    # Nor can a link name what she cannot read (Arvados' check_readable_uuid): 422 "not found".
    hidden = _own_project(_make_user(api, cluster_env, "victim")[1])
    _raises(m.links().create(body={"link": {"link_class": "tag", "name": "x", "head_uuid": hidden}}), (422,))


# 2 -------------------------------------------------------------------------------------------

def test_other_users_tokens_are_invisible(api, cluster, alice, mallory) -> None:
    a_user, a = alice
    _, m = mallory
    # Alice lets Mallory read her user record: that must not extend to her tokens.
    _grant(a, m.users().current().execute()["uuid"], a_user["uuid"])
    a_token = a.api_client_authorizations().current().execute()
    _raises(m.api_client_authorizations().get(uuid=a_token["uuid"]), (404,))
    _raises(m.api_client_authorizations().get(uuid=cluster.root_token_uuid), (404,))
    _raises(m.api_client_authorizations().update(uuid=a_token["uuid"], body={"api_client_authorization": {
        "scopes": ["all"]}}), (404,))
    _raises(m.api_client_authorizations().delete(uuid=a_token["uuid"]), (404,))
    seen = m.api_client_authorizations().list(limit=1000).execute()["items"]
    assert {t["owner_uuid"] for t in seen} == {m.users().current().execute()["uuid"]}
    assert cluster.root_token_secret not in json.dumps(seen)
    assert a.api_client_authorizations().get(uuid=a_token["uuid"]).execute()["uuid"] == a_token["uuid"]


# 3 -------------------------------------------------------------------------------------------

def test_token_owner_cannot_be_moved(api, alice, mallory) -> None:
    a_user, a = alice
    m_user, m = mallory
    _grant(a, m_user["uuid"], a_user["uuid"], "can_write")  # even with write access to Alice
    mine = m.api_client_authorizations().create(body={"api_client_authorization": {}}).execute()
    _raises(m.api_client_authorizations().update(uuid=mine["uuid"], body={"api_client_authorization": {
        "owner_uuid": a_user["uuid"]}}), (403,))
    assert api.api_client_authorizations().get(uuid=mine["uuid"]).execute()["owner_uuid"] == m_user["uuid"]


# 4 -------------------------------------------------------------------------------------------

def test_project_is_not_a_principal(api, alice, mallory) -> None:
    a_user, _ = alice
    _, m = mallory
    p1, p2 = _own_project(m), _own_project(m)
    err = _raises(m.links().create(body={"link": {"link_class": "permission", "name": "can_read",
                                                  "tail_uuid": p1, "head_uuid": p2}}), (422,))
    assert "tail_uuid" in err
    _raises(api.links().create(body={"link": {"link_class": "permission", "name": "can_read",
                                              "tail_uuid": p1, "head_uuid": p2}}), (422,))
    grant = _grant(m, a_user["uuid"], p2)
    _raises(api.links().update(uuid=grant["uuid"], body={"link": {"tail_uuid": p1}}), (422,))


# 5 -------------------------------------------------------------------------------------------

def test_mounts_of_unreadable_collections_refused(api, project, alice, image_pdh) -> None:
    _, a = alice
    secret = _private_collection(api, project)
    out = {"/var/spool/cwl": {"kind": "tmp", "capacity": 1 << 20}}
    cases = {
        "by uuid": {"mounts": {**out, "/in": {"kind": "collection", "uuid": secret["uuid"]}}},
        "by hash": {"mounts": {**out, "/in": {"kind": "collection",
                                              "portable_data_hash": secret["portable_data_hash"]}}},
        "stdin": {"mounts": {**out, "stdin": {"kind": "collection", "portable_data_hash":
                                              secret["portable_data_hash"], "path": "a.txt"}}},
        "image by uuid": {"container_image": secret["uuid"]},
        "image by hash": {"container_image": secret["portable_data_hash"]},
    }
    for what, overrides in cases.items():
        body = request_body(["cat", "/in/a.txt"], image_pdh, **overrides)
        err = _raises(a.container_requests().create(body={"container_request": body}), (403, 404, 422))
        assert ("mounts" in err) or ("container_image" in err), (what, err)


# 6 -------------------------------------------------------------------------------------------

def test_image_name_not_hijacked_by_another_users_link(api, test_image, alice, mallory, image_pdh) -> None:
    _, a = alice
    _, m = mallory
    fake = arvados.collection.Collection(api_client=m)
    with fake.open(f"{'f' * 64}.tar", "w") as f:
        f.write("not the image you wanted\n")
    fake.save_new(name=f"fake image {secrets.token_hex(3)}")
    hijack = m.links().create(body={"link": {
        "link_class": "docker_image_repo+tag", "name": repo_tag(test_image), "head_uuid": fake.manifest_locator(),
        "properties": {"image_timestamp": "2100-01-01T00:00:00Z"}}}).execute()
    try:
        cr = create_request(a, request_body(["true"], test_image))
        c = a.containers().get(uuid=cr["container_uuid"]).execute()
        assert c["container_image"] == image_pdh != fake.portable_data_hash()
        a.container_requests().update(uuid=cr["uuid"], body={"container_request": {"priority": 0}}).execute()
    finally:
        # The admin reads every link, as on Arvados, and would resolve the name to the fake:
        # later tests run as the admin.
        m.links().delete(uuid=hijack["uuid"]).execute()


# 7 -------------------------------------------------------------------------------------------

def test_log_about_someone_elses_object_refused(api, cluster_env, project, mallory) -> None:
    _, m = mallory
    victim = _own_project(_make_user(api, cluster_env, "victim")[1])
    for target in (project, victim):
        _raises(m.logs().create(body={"log": {"object_uuid": target, "event_type": "update",
                                               "summary": "forged"}}), (403,))
    assert not api.logs().list(filters=[["object_uuid", "in", [project, victim]],
                                        ["summary", "=", "forged"]]).execute()["items"]
    own = _own_project(m)
    assert m.logs().create(body={"log": {"object_uuid": own, "event_type": "note",
                                         "summary": "mine"}}).execute()["object_uuid"] == own


# 8 -------------------------------------------------------------------------------------------

def test_containers_lock_unlock_and_state_refused(api, alice, image_pdh) -> None:
    _, a = alice
    cr = create_request(a, request_body(["sh", "-c", "sleep 20"], image_pdh))
    try:
        uuid = cr["container_uuid"]
        for call in (a.containers().lock(uuid=uuid), a.containers().unlock(uuid=uuid)):
            assert "Forbidden" in _raises(call, (403,))
        _raises(a.containers().update(uuid=uuid, body={"container": {"state": "Cancelled"}}), (403,))
        _raises(a.containers().update(uuid=uuid, body={"container": {"priority": 1000}}), (403,))
    finally:
        a.container_requests().update(uuid=cr["uuid"], body={"container_request": {"priority": 0}}).execute()


# 9 -------------------------------------------------------------------------------------------

def test_mount_paths_that_leave_their_place_refused(alice, image_pdh) -> None:
    _, a = alice
    own = a.collections().create(body={"collection": {"name": f"own {secrets.token_hex(3)}"}}).execute()
    out = {"/var/spool/cwl": {"kind": "tmp", "capacity": 1 << 20}}
    cases = {
        "/in": {"/in": {"kind": "collection", "portable_data_hash": "../../../etc"}},
        "/in2": {"/in2": {"kind": "collection", "portable_data_hash": "/etc"}},
        "/in3": {"/in3": {"kind": "collection", "uuid": own["uuid"], "path": "../../../../etc/passwd"}},
        "stdout": {"stdout": {"kind": "file", "path": "/var/spool/cwl/../../../tmp/x"}},
        "/var/spool/cwl/../../../etc": {"/var/spool/cwl/../../../etc": {"kind": "tmp", "capacity": 1 << 20}},
    }
    for name, mounts in cases.items():
        body = request_body(["true"], image_pdh, mounts={**out, **mounts})
        err = _raises(a.container_requests().create(body={"container_request": body}), (422,))
        assert name in err, (name, err)
    secret = {"/var/spool/cwl/../../../root/.ssh/authorized_keys": {"kind": "text", "content": "key"}}
    body = request_body(["true"], image_pdh, mounts=out, secret_mounts=secret)
    assert "secret_mounts" in _raises(a.container_requests().create(body={"container_request": body}), (422,))


# 10 ------------------------------------------------------------------------------------------

def test_output_symlinks_never_read_host_files(api, project, image_pdh) -> None:
    coll = _private_collection(api, project, "from the collection\n")
    script = ("echo inside > /var/spool/cwl/real.txt; ln -s /etc/passwd /var/spool/cwl/leak; "
              "ln -s ../../../etc/hostname /var/spool/cwl/rel_leak; ln -s real.txt /var/spool/cwl/good; "
              "ln -s /var/spool/cwl/real.txt /var/spool/cwl/good_abs; ln -s /keep/in/a.txt /var/spool/cwl/from_coll; "
              "ln -s loop /var/spool/cwl/loop")
    body = request_body(["sh", "-c", script], image_pdh, mounts={
        "/var/spool/cwl": {"kind": "tmp", "capacity": 1 << 20},
        "/keep/in": {"kind": "collection", "portable_data_hash": coll["portable_data_hash"]}},
        use_existing=False)
    cr = wait_final(api, create_request(api, body)["uuid"])
    assert cr["output_uuid"], cr
    out = arvados.collection.CollectionReader(cr["output_uuid"], api_client=api)
    names = set(out.keys())
    assert {"real.txt", "good", "good_abs", "from_coll"} <= names
    assert not {"leak", "rel_leak", "loop"} & names, names
    assert out.open("good").read() == "inside\n" and out.open("good_abs").read() == "inside\n"
    assert out.open("from_coll").read() == "from the collection\n"
    assert hashlib.md5(b"from the collection\n").hexdigest() in out.manifest_text()  # by reference
    for host_file in ("/etc/passwd", "/etc/hostname"):
        text = Path(host_file).read_text()
        assert all(out.open(n).read() != text for n in names)
    log = arvados.collection.CollectionReader(cr["log_uuid"], api_client=api)
    assert "not capturing symlink /var/spool/cwl/leak" in log.open("crunch-run.txt").read()


def test_reuse_never_hands_out_another_users_output(api, project, alice, image_pdh) -> None:
    _, a = alice
    marker = secrets.token_hex(6)
    body = request_body(["sh", "-c", f"echo {marker} > /var/spool/cwl/private.txt"], image_pdh,
                        owner_uuid=project)
    mine = wait_final(api, create_request(api, body)["uuid"])
    assert mine["output_uuid"]
    theirs = create_request(a, {**body, "owner_uuid": a.users().current().execute()["uuid"]})
    try:
        assert theirs["container_uuid"] != mine["container_uuid"]
    finally:
        a.container_requests().update(uuid=theirs["uuid"], body={"container_request": {"priority": 0}}).execute()


def test_container_runs_as_the_committing_user_not_the_project(api, project, alice, image_pdh) -> None:
    """Arvados' runtime_user_uuid: a token acting as the project would have can_manage on it,
    more than the user's own can_write (enough to grant the project to anyone)."""
    a_user, a = alice
    _grant(api, a_user["uuid"], project, "can_write")
    cr = create_request(a, request_body(["true"], image_pdh, owner_uuid=project, priority=0))
    assert a.containers().get(uuid=cr["container_uuid"]).execute()["runtime_user_uuid"] == a_user["uuid"]


def test_new_users_can_use_images_shared_with_all_users(api, cluster_env, built_images) -> None:
    """As an administrator does: store an image in a project, then share it with "All users"."""
    from toil_arvados.images.keep import store_image
    from toil_arvados.localcluster.bootstrap import all_users_group_uuid

    from conftest import PYTHON_IMAGE

    _, u = _make_user(api, cluster_env, "newcomer")
    built = built_images[PYTHON_IMAGE]
    shared = api.groups().create(body={"group": {"name": f"images {secrets.token_hex(3)}",
                                                 "group_class": "project"}}).execute()["uuid"]
    name = f"shared-{secrets.token_hex(3)}:1"
    store_image(api, built.tarball, built.image_id, (name,), owner_uuid=shared)
    body = request_body(["true"], name, priority=0, state="Committed")
    _raises(u.container_requests().create(body={"container_request": body}), (422,))  # not shared yet
    cluster_id = api.users().current().execute()["uuid"].split("-")[0]
    _grant(api, all_users_group_uuid(cluster_id), shared)
    cr = create_request(u, request_body(["true"], name, priority=0, state="Committed"))
    assert cr["container_uuid"]


# 11 ------------------------------------------------------------------------------------------

def test_container_token_expires_when_it_ends(api, cluster_env, image_pdh) -> None:
    body = request_body(["sh", "-c", "echo $ARVADOS_API_TOKEN > token"], image_pdh, use_existing=False,
                        runtime_constraints={"vcpus": 1, "ram": 128 << 20, "API": True})
    cr = wait_final(api, create_request(api, body)["uuid"])
    c = api.containers().get(uuid=cr["container_uuid"]).execute()
    assert c["state"] == "Complete" and not c.get("auth_uuid")
    token = arvados.collection.CollectionReader(cr["output_uuid"], api_client=api).open("token").read().strip()
    assert token.startswith("v2/")
    _raises(_client(cluster_env, token).users().current(), (401,))


def _offline_cluster(tmp_path: Path):
    """A store with a Running, a Locked and a Complete container, each with a live token, as a
    crash leaves them; and the dispatcher that starts on it."""
    from toil_arvados.localcluster.auth import Authorizer
    from toil_arvados.localcluster.containers import Lifecycle
    from toil_arvados.localcluster.dispatcher import Dispatcher
    from toil_arvados.localcluster.store import Store

    sysuser = "zzzzz-tpzed-000000000000000"
    store = Store(tmp_path / "db.sqlite3", "zzzzz", sysuser)
    store.create("users", {"is_admin": True, "is_active": True}, uuid=sysuser)
    user = store.create("users", {"is_admin": False, "is_active": True})
    tokens = {}
    for state in ("Running", "Locked", "Complete"):
        c = store.create("containers", {"state": state, "priority": 1, "mounts": {}})
        tok = store.create("api_client_authorizations", {"owner_uuid": user["uuid"], "api_token": secrets.token_hex(20),
                                                         "expires_at": None, "_container_uuid": c["uuid"]})
        store.update(c["uuid"], {"auth_uuid": tok["uuid"]})
        tokens[state] = f"v2/{tok['uuid']}/{tok['api_token']}"
    cfg = SimpleNamespace(state_dir=str(tmp_path), container_count_max=3)
    lifecycle = Lifecycle(store, cfg)
    dispatcher = Dispatcher(store, lifecycle, cfg, blockstore=None, runtime=None, api_env={})
    return store, Authorizer(store), dispatcher, tokens


def test_container_tokens_expire_after_a_crash(tmp_path: Path) -> None:
    store, authz, dispatcher, tokens = _offline_cluster(tmp_path)
    assert all(authz.authenticate(t) for t in tokens.values())
    dispatcher.recover()
    assert {s: authz.authenticate(t) for s, t in tokens.items()} == {s: None for s in tokens}


# 12 ------------------------------------------------------------------------------------------

def test_oversized_request_refused_before_reading_it(cluster) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((cluster.host, cluster.api_port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=cluster.host) as s:
            s.sendall((f"POST /arvados/v1/collections HTTP/1.1\r\nHost: {cluster.api_host}\r\n"
                       f"Authorization: Bearer {cluster.root_token}\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {200 << 20}\r\n\r\n").encode())
            reply = ""
            while "MaxRequestSize" not in reply:  # headers, then the error body naming the limit
                chunk = s.recv(4096).decode(errors="replace")
                if not chunk:
                    break
                reply += chunk
    assert reply.split("\r\n")[0].split()[1] == "413", reply
    assert "MaxRequestSize" in reply


# 13 ------------------------------------------------------------------------------------------

def test_token_secrets_compared_in_constant_time(tmp_path: Path, monkeypatch) -> None:
    from toil_arvados.localcluster import auth

    store, authz, _, tokens = _offline_cluster(tmp_path)
    calls = []
    real = auth.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    token = tokens["Running"]
    assert authz.authenticate(token) is not None and calls
    calls.clear()
    assert authz.authenticate(token.rsplit("/", 1)[1]) is not None and calls  # v1 form: bare secret
    assert authz.authenticate(token[:-1] + ("0" if token[-1] != "0" else "1")) is None


def test_output_links_resolved_in_the_containers_view(tmp_path: Path) -> None:
    """The pure part of rule 10, without a server: what each kind of link becomes."""
    from toil_arvados.localcluster.output_links import contain_links

    out, coll, secret = tmp_path / "out", tmp_path / "coll", tmp_path / "secret"
    for d in (out, coll, secret):
        d.mkdir()
    (out / "real.txt").write_text("inside\n")
    (coll / "a.txt").write_text("collection\n")
    (out / "sub").mkdir()
    links = {"good": "real.txt", "up": "sub/../real.txt", "abs": "/var/spool/cwl/real.txt",
             "coll": "/keep/in/a.txt", "host": "/etc/passwd", "escape": "../../../etc/passwd",
             "chain": "sub/hop", "secret": "/secret/s", "loop": "loop", "root": "../../.."}
    for name, target in links.items():
        (out / name).symlink_to(target)
    (out / "sub" / "hop").symlink_to("/etc")  # a directory link met half-way
    (out / "via").symlink_to("sub/hop/passwd")
    notes, refs = contain_links({"/var/spool/cwl": str(out)},
                                {"/var/spool/cwl": str(out), "/keep/in": str(coll), "/secret": str(secret)},
                                {"/secret"}, {"/keep/in"}, "/var/spool/cwl")
    kept = {p.name: p.read_text() for p in out.iterdir() if p.is_file()}
    assert kept == {"real.txt": "inside\n", "good": "inside\n", "up": "inside\n", "abs": "inside\n"}
    assert refs == {"/var/spool/cwl/coll": "/keep/in/a.txt"}  # spliced from the collection
    assert not any((out / n).is_symlink() for n in ("host", "escape", "chain", "secret", "loop", "root", "via", "coll"))
    assert not (out / "sub" / "hop").is_symlink()
    assert len(notes) == 7 and all(n.startswith("not capturing symlink /var/spool/cwl/") for n in notes)


def test_websocket_stops_delivering_once_its_token_expires(tmp_path: Path) -> None:
    """Rule 11 for the event bus: a session authenticated once must not outlive its token."""
    store, authz, dispatcher, tokens = _offline_cluster(tmp_path)
    caller = authz.authenticate(tokens["Running"])
    own = store.create("groups", {"group_class": "project", "owner_uuid": caller.uuid})
    event = store.logs_after(0)[-1]
    assert event["object_uuid"] == own["uuid"] and authz.can_read_event(caller, event)
    dispatcher.recover()  # the container is gone: its token expires
    assert not authz.can_read_event(caller, event)
