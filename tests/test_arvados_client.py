"""The gateway to Arvados: error kinds by HTTP status, retries, exactly-once creates, paging."""
from __future__ import annotations

import socket
import ssl
import threading
import time

import httplib2
import pytest
from arvados.errors import ApiError, HttpError, KeepReadError, KeepWriteError, NotFoundError
from arvados.keep import KeepClient

from toil_arvados import arvados_client as gw


def _api_error(status: int) -> ApiError:
    return ApiError(httplib2.Response({"status": status}), b'{"errors": ["nope"]}')


@pytest.mark.parametrize("status,kind", [
    (401, gw.AUTH), (403, gw.AUTH), (404, gw.NOT_FOUND), (409, gw.CONFLICT), (422, gw.CONFLICT),
    (500, gw.RETRYABLE), (502, gw.RETRYABLE), (503, gw.RETRYABLE), (429, gw.RETRYABLE), (400, gw.OTHER)])
def test_api_errors_are_classified_by_status(status: int, kind: str) -> None:
    assert gw.error_kind(_api_error(status)) == kind
    assert gw.kind_of_status(status) == kind


def test_connection_and_keep_errors_are_classified_by_type() -> None:
    for error in (ConnectionRefusedError(111, "refused"), socket.timeout("timed out"),
                  httplib2.ServerNotFoundError("no such host"), TimeoutError()):
        assert gw.error_kind(error) == gw.RETRYABLE, error
    assert gw.error_kind(HttpError(503, "busy")) == gw.RETRYABLE
    assert gw.error_kind(KeepReadError("failed", [("keep0", ConnectionResetError())], "service")) == gw.RETRYABLE
    assert gw.error_kind(NotFoundError("gone", [("keep0", HttpError(404, "nf"))], "service")) == gw.NOT_FOUND
    assert gw.error_kind(ValueError("duplicate key")) == gw.OTHER  # never judged by message text


def test_an_untrusted_certificate_is_named_with_its_fix() -> None:
    error = ssl.SSLCertVerificationError("[req-1] Could not connect to https://h/discovery/v1/apis/arvados/v1/rest\n"
                                         "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    line = gw.describe(error, "cannot reach the Arvados API at h")
    assert "ARVADOS_API_HOST_INSECURE=1" in line and "\n" not in line
    assert "ARVADOS_API_HOST_INSECURE" not in gw.describe(ConnectionRefusedError(111, "refused"), "cannot reach")


def test_retrying_rides_out_retryable_errors_and_stops_on_others() -> None:
    calls, slept = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise ConnectionRefusedError(111, "refused")
        return "ok"

    assert gw.retrying(flaky, "test", budget=600, sleep=slept.append) == "ok"
    assert len(slept) == 3 and slept[1] > slept[0]  # backoff grows
    with pytest.raises(ApiError):
        gw.retrying(lambda: (_ for _ in ()).throw(_api_error(422)), "test", sleep=slept.append)
    with pytest.raises(ConnectionRefusedError):  # budget 0: the fail-fast first contact
        gw.retrying(lambda: (_ for _ in ()).throw(ConnectionRefusedError()), "test", budget=0, sleep=slept.append)


class _FakeRequests:
    """container_requests() whose first create succeeds on the server but loses its answer."""

    def __init__(self) -> None:
        self.stored: list[dict] = []
        self.creates = 0

    def __call__(self) -> "_FakeRequests":
        return self

    def create(self, body: dict, **_: object) -> "_Exec":
        def run() -> dict:
            self.creates += 1
            record = {"uuid": f"zzzzz-xvhdp-{self.creates:015d}", **body["container_request"]}
            self.stored.append(record)
            if self.creates == 1:
                raise ConnectionResetError(104, "connection reset by peer")
            return record
        return _Exec(run)

    def list(self, filters: list, **_: object) -> "_Exec":
        (field, _op, value), = filters
        key = field.split(".", 1)[1]
        return _Exec(lambda: {"items": [r for r in self.stored if r["properties"].get(key) == value]})


class _Exec:
    def __init__(self, fn) -> None:
        self.fn = fn

    def execute(self, **_: object) -> dict:
        return self.fn()


class _GatewayTime:
    """The ``time`` the gateway sees in these tests: ``now[0]`` moves only when it sleeps.

    Replacing the gateway's ``time`` rather than the ``time`` module leaves every other thread
    of the test process (clients left by earlier tests, the SDK's own) on the real clock, so they
    cannot move this one."""

    def __init__(self, now: list[float]) -> None:
        self.now = now
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        return self.now[0]

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now[0] += seconds

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def _gateway_clock(monkeypatch, now: list[float]) -> list[float]:
    monkeypatch.setattr(gw, "time", _GatewayTime(now))
    return now


def test_a_create_whose_answer_was_lost_is_found_not_repeated(monkeypatch) -> None:
    _gateway_clock(monkeypatch, [0.0])
    fake = _FakeRequests()
    api = type("Api", (), {"container_requests": fake})()
    cr = gw.create_request(api, {"name": "step", "properties": {"k": "v"}}, "test")
    assert fake.creates == 1 and len(fake.stored) == 1  # looked up, not created again
    assert cr["uuid"] == fake.stored[0]["uuid"] and cr["properties"]["k"] == "v"


def test_websocket_filters_are_only_what_arvados_ws_honours() -> None:
    assert gw.ws_filters(["update"]) == [["event_type", "in", ["update"]]]


def test_a_filter_group_is_refused_as_project_in_one_line() -> None:
    with pytest.raises(gw.ArvadosSetupError) as e:
        gw.check_project_group({"uuid": "zzzzz-j7d0g-filtergroup0001", "group_class": "filter"})
    assert "filter group" in str(e.value) and "\n" not in str(e.value)
    assert gw.check_project_group({"uuid": "zzzzz-j7d0g-000000000000001", "group_class": "project"})


def test_a_frozen_project_is_refused_in_one_line() -> None:
    with pytest.raises(gw.ArvadosSetupError) as e:
        gw.check_project_group({"uuid": "zzzzz-j7d0g-000000000000001", "group_class": "project",
                                "frozen_by_uuid": "zzzzz-tpzed-000000000000002"})
    assert "is frozen" in str(e.value) and "--arvadosProject" in str(e.value) and "\n" not in str(e.value)


def test_untimestamped_strips_crunch_timestamps() -> None:
    assert gw.untimestamped("2026-12-02T05:00:00.123456789Z boom") == "boom"
    assert gw.untimestamped("no stamp") == "no stamp"


def test_list_all_pages_over_more_than_one_page(api, project: str) -> None:
    made = {api.collections().create(body={"collection": {"owner_uuid": project, "name": f"c{i}"}}).execute()["uuid"]
            for i in range(7)}
    pages = []

    def counted(**kw):
        pages.append(kw)
        return api.collections().list(**kw)

    found = gw.list_all(counted, [["owner_uuid", "=", project]], ["uuid", "name"], page_size=3)
    assert {r["uuid"] for r in found} == made
    assert len(pages) >= 3 and all(p["limit"] == 3 for p in pages)  # really paged, 3 at a time
    assert len(found) == 7  # no record twice across page boundaries
    some = sorted(made)[:5]
    assert {r["uuid"] for r in gw.list_all(api.collections().list, [["uuid", "in", some]], page_size=2)} == set(some)


class _Down:
    """An SDK resource whose requests fail as if the host were down, ``failures`` times."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def get(self, **_: object) -> _Exec:
        def run() -> dict:
            self.calls += 1
            if self.calls <= self.failures:
                raise ConnectionRefusedError(111, "refused")
            return {"uuid": "x"}
        return _Exec(run)


def test_patient_client_fails_fast_at_start_up_and_rides_out_outages_after(monkeypatch) -> None:
    _gateway_clock(monkeypatch, [0.0])
    monkeypatch.delenv(gw.STARTED_ENV, raising=False)
    down = _Down(failures=3)
    sdk = type("Sdk", (), {"_rootDesc": {"resources": {"collections": {}}}, "collections": lambda self: down,
                           "api_token": "t"})()
    client = gw.PatientClient(sdk)
    assert client.api_token == "t" and gw.unwrapped(client) is sdk
    with pytest.raises(ConnectionRefusedError):  # the leader's first contact: say so at once
        client.collections().get(uuid="x").execute()
    assert down.calls == 1
    monkeypatch.setenv(gw.STARTED_ENV, "1")  # the workflow runs: wait for the cluster to return
    assert client.collections().get(uuid="x").execute() == {"uuid": "x"}
    assert down.calls == 4


def test_a_short_budget_is_not_stretched_by_the_patient_client(monkeypatch) -> None:
    clock = _gateway_clock(monkeypatch, [0.0])
    monkeypatch.setenv(gw.STARTED_ENV, "1")
    down = _Down(failures=10**6)
    sdk = type("Sdk", (), {"_rootDesc": {"resources": {"collections": {}}}, "collections": lambda self: down})()
    client = gw.PatientClient(sdk)
    with pytest.raises(ConnectionRefusedError):
        gw.call(lambda: client.collections().get(uuid="x"), "cancel", budget=10.0)
    assert clock[0] <= 10.0  # gave up within its own budget, not the client's ten minutes


def test_resource_objects_are_built_once_per_thread() -> None:
    """googleapiclient builds a whole resource object per ``api.collections()``: the gateway
    keeps one per resource per thread (they are not thread-safe), not one per call."""
    built: list[tuple[str, int]] = []

    class Sdk:
        _rootDesc = {"resources": {"collections": {}, "groups": {}}}

        def collections(self, *args: object) -> _Down:
            built.append(("collections", threading.get_ident()))
            return _Down(failures=0)

        def groups(self) -> _Down:
            built.append(("groups", threading.get_ident()))
            return _Down(failures=0)

    client = gw.PatientClient(Sdk())
    for _ in range(3):
        assert client.collections().get(uuid="x").execute() == {"uuid": "x"}
    client.groups().get(uuid="x").execute()
    other = threading.Thread(target=lambda: client.collections().get(uuid="x").execute())
    other.start()
    other.join()
    client.collections("with-args")  # anything unusual is built as asked
    assert [name for name, _ in built] == ["collections", "groups", "collections", "collections"]
    assert built[0][1] == built[1][1] != built[2][1]


# -- Keep block transfers ride out an outage through the gateway -----------------------------------

KEEP_OUTAGE = 5 * 60.0  # what the plugin must ride out (issue 10); the clock is fake, nothing waits


@pytest.fixture
def fake_clock(monkeypatch) -> list[float]:
    """A clock that moves only when the gateway sleeps (any thread)."""
    return _gateway_clock(monkeypatch, [0.0])


class _KeepDown:
    """A real (local-store) SDK Keep client behind a Keep that refuses every connection, as the
    SDK reports it, until the clock reaches ``until``. Records each attempt's ``num_retries``."""

    def __init__(self, store: KeepClient, clock: list[float], until: float) -> None:
        self.store, self.clock, self.until = store, clock, until
        self.attempts: list[int | None] = []

    def _answer(self, error: type, num_retries: int | None) -> None:
        self.attempts.append(num_retries)
        if self.clock[0] < self.until:
            raise error("no Keep service answered", [("http://keep0:25107/", ConnectionRefusedError(111, "refused"))],
                        "service")

    def get(self, locator: str, num_retries: int | None = None, **kwargs: object) -> bytes:
        self._answer(KeepReadError, num_retries)
        return self.store.get(locator, num_retries=num_retries, **kwargs)

    def put(self, data: bytes, num_retries: int | None = None, **kwargs: object) -> str:
        self._answer(KeepWriteError, num_retries)
        return self.store.put(data, num_retries=num_retries, **kwargs)

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)


def _sdk_with_keep(keep: object) -> object:
    return type("Sdk", (), {"_rootDesc": {"resources": {"collections": {}}}, "keep": keep, "api_token": "t"})()


def test_keep_transfers_ride_out_a_five_minute_outage_with_backoff(monkeypatch, fake_clock, tmp_path) -> None:
    monkeypatch.setenv(gw.STARTED_ENV, "1")
    store = KeepClient(local_store=str(tmp_path))
    locator = store.put(b"pickled job")
    down = _KeepDown(store, fake_clock, until=KEEP_OUTAGE)
    keep = gw.PatientClient(_sdk_with_keep(down)).keep

    assert keep.get(locator, num_retries=8) == b"pickled job"
    assert fake_clock[0] >= KEEP_OUTAGE
    # Backoff, not a busy loop; and one retry policy: the SDK's own loop is never asked to retry.
    assert 5 < len(down.attempts) < 30 and set(down.attempts) == {0}

    down.until = fake_clock[0] + KEEP_OUTAGE
    written = keep.put(b"new block", num_retries=8)
    assert store.get(written) == b"new block" and fake_clock[0] >= down.until


def test_keep_job_store_files_are_written_and_read_through_a_keep_outage(monkeypatch, fake_clock, tmp_path) -> None:
    """The job store's own path (collection_io: the SDK's block manager in background threads)."""
    from toil_arvados.jobstore import collection_io

    monkeypatch.setenv(gw.STARTED_ENV, "1")
    down = _KeepDown(KeepClient(local_store=str(tmp_path)), fake_clock, until=KEEP_OUTAGE)
    api = gw.PatientClient(_sdk_with_keep(down))
    writer = collection_io.OneFileWriter(api, "job")
    writer.write_bytes(b"job description")
    manifest = writer.manifest_text()
    assert fake_clock[0] >= KEEP_OUTAGE

    down.until = fake_clock[0] + KEEP_OUTAGE
    assert collection_io.read_all(api, manifest, "job") == b"job description"
    assert fake_clock[0] >= 2 * KEEP_OUTAGE


def test_keep_gives_up_after_the_budget_and_at_once_on_a_missing_block(monkeypatch, fake_clock, tmp_path) -> None:
    monkeypatch.setenv(gw.STARTED_ENV, "1")
    store = KeepClient(local_store=str(tmp_path))
    down = _KeepDown(store, fake_clock, until=float("inf"))
    keep = gw.PatientClient(_sdk_with_keep(down)).keep
    with pytest.raises(KeepWriteError):  # Keep never returns: the error, after the budget, not never
        keep.put(b"x")
    assert KEEP_OUTAGE <= fake_clock[0] <= gw.OUTAGE_BUDGET

    class Missing:  # every Keep service answers 404, as the SDK reports it
        calls = 0

        def get(self, locator: str, **_: object) -> bytes:
            self.calls += 1
            raise NotFoundError(f"{locator} not found", [("http://keep0:25107/", HttpError(404, "nf"))], "service")

    missing = Missing()
    before = fake_clock[0]
    with pytest.raises(NotFoundError):
        gw.PatientClient(_sdk_with_keep(missing)).keep.get("acbd18db4cc2f85cedef654fccc4a4d8+3")
    assert missing.calls == 1 and fake_clock[0] == before  # a 404 is not an outage


def test_keep_fails_fast_at_start_up(monkeypatch, fake_clock, tmp_path) -> None:
    monkeypatch.delenv(gw.STARTED_ENV, raising=False)
    down = _KeepDown(KeepClient(local_store=str(tmp_path)), fake_clock, until=float("inf"))
    with pytest.raises(KeepReadError):
        gw.PatientClient(_sdk_with_keep(down)).keep.get("acbd18db4cc2f85cedef654fccc4a4d8+3")
    assert down.attempts == [gw.CONNECT_RETRIES] and fake_clock[0] == 0.0  # only the SDK's short retries
