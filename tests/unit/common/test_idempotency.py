"""The shared idempotency mechanism on its SQL store (SQLite file, real transactions)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tuneforge.common import db
from tuneforge.common.db.idempotency import SqlIdempotencyStore, idempotency_table
from tuneforge.common.errors import AlreadyExists, InvalidInput, NotFound
from tuneforge.common.idempotency import Idempotency, proto_digest


@pytest.fixture
def idem(tmp_path: Path):
    engine = db.create_db_engine(f"sqlite:///{tmp_path / 'keys.db'}")
    metadata = db.new_metadata()
    table = idempotency_table(metadata, "t_idempotency_keys")
    metadata.create_all(engine)
    store = SqlIdempotencyStore(db.make_sessionmaker(engine), table)
    yield Idempotency(store, poll_s=0.01), store
    engine.dispose()


class Creator:
    """Creates numbered results; ``gate`` holds creations until the test opens it."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()
        self.results: dict[str, str] = {}

    def create(self, state: str = "OK") -> str:
        self.gate.wait(30)
        with self.lock:
            self.count += 1
            rid = f"r{self.count}"
            self.results[rid] = state
        return rid

    def load(self, rid: str) -> tuple[str, str]:
        if rid not in self.results:
            raise NotFound(f"{rid} is gone")
        return rid, self.results[rid]


def test_concurrent_identical_requests_get_one_result(idem) -> None:
    idempotency, _ = idem
    creator, answers = Creator(), []
    creator.gate.clear()
    threads = [threading.Thread(target=lambda: answers.append(
        idempotency.run("acme", "Upload", "k1", "d1", creator.create, creator.load))) for _ in range(10)]
    for t in threads:
        t.start()
    creator.gate.set()
    for t in threads:
        t.join(60)
    assert answers == [("r1", "OK")] * 10 and creator.count == 1


def test_another_body_under_the_key_is_already_exists_naming_it(idem) -> None:
    idempotency, _ = idem
    creator = Creator()
    idempotency.run("acme", "Upload", "k1", "d1", creator.create, creator.load)
    with pytest.raises(AlreadyExists, match="request_id 'k1' was already used for a different Upload"):
        idempotency.run("acme", "Upload", "k1", "d2", creator.create, creator.load)


def test_keys_are_scoped_per_rpc_and_tenant(idem) -> None:
    idempotency, _ = idem
    creator = Creator()
    a = idempotency.run("acme", "Upload", "k1", "d1", creator.create, creator.load)
    b = idempotency.run("acme", "CreateMixture", "k1", "d9", creator.create, creator.load)
    c = idempotency.run("acme2", "Upload", "k1", "d1", creator.create, creator.load)
    assert len({a, b, c}) == 3


def test_a_failed_result_or_a_failed_create_is_retried(idem) -> None:
    idempotency, _ = idem
    creator = Creator()
    first = idempotency.run("acme", "Curate", "k1", "d1", lambda: creator.create("FAILED"), creator.load,
                            retry_if=lambda r: r[1] == "FAILED")
    again = idempotency.run("acme", "Curate", "k1", "d1", creator.create, creator.load,
                            retry_if=lambda r: r[1] == "FAILED")
    assert first == ("r1", "FAILED") and again == ("r2", "OK")

    def broken() -> str:
        raise InvalidInput.field_error("x", "bad")
    with pytest.raises(InvalidInput):
        idempotency.run("acme", "Mix", "k2", "d1", broken, creator.load)
    # Nothing was created: a corrected request under the same key is not turned away.
    assert idempotency.run("acme", "Mix", "k2", "d2", creator.create, creator.load)[1] == "OK"


def test_a_deleted_result_is_created_again_and_pending_keys_of_a_dead_process_are_cleared(idem) -> None:
    idempotency, store = idem
    creator = Creator()
    rid, _ = idempotency.run("acme", "Upload", "k1", "d1", creator.create, creator.load)
    del creator.results[rid]
    assert idempotency.run("acme", "Upload", "k1", "d1", creator.create, creator.load)[0] == "r2"
    assert store.claim("acme", "Upload", "k3", "d1") is None  # a request that died mid-way
    assert store.clear_pending() == 1
    assert idempotency.run("acme", "Upload", "k3", "d1", creator.create, creator.load)[0] == "r3"


def test_the_digest_ignores_only_the_key_field() -> None:
    from tuneforge.datasets.v1 import datasets_pb2 as pb

    a = pb.CreateMixtureRequest(dataset_name="m", total_rows=5, request_id="k1")
    assert proto_digest(a, "request_id") == proto_digest(pb.CreateMixtureRequest(dataset_name="m", total_rows=5,
                                                                                  request_id="k2"), "request_id")
    assert proto_digest(a, "request_id") != proto_digest(pb.CreateMixtureRequest(dataset_name="m", total_rows=6,
                                                                                  request_id="k1"), "request_id")
