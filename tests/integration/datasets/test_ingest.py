"""Ingest over gRPC against the real server: formats, bad input, limits, archives, tenancy."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.integration.datasets.conftest import DatasetsService, gz, jsonl
from tuneforge.datasets.v1 import datasets_pb2 as pb

pytestmark = pytest.mark.integration

ALPACA = [{"instruction": f"Say hello {i}", "input": "", "output": f"Hello {i}!"} for i in range(5)]


def _violations(exc: grpc.RpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(exc)
    assert status is not None, "the error carries no rich status"
    out = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out += [(v.field, v.description) for v in bad.field_violations]
    return out


def _parquet(rows: list[dict]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def _csv(header: list[str], rows: list[list[str]]) -> bytes:
    import csv

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode()


CHAT = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Q{i}"},
                      {"role": "assistant", "content": f"A{i}"}]} for i in range(3)]
SHAREGPT = [[json.dumps([{"from": "human", "value": f"hi {i}"}, {"from": "gpt", "value": f"hello {i}"}])] for i in range(4)]
PREFERENCE = [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(3)]
DPO = [{"input": {"messages": [{"role": "user", "content": f"q{i}"}]},
        "preferred_output": [{"role": "assistant", "content": f"yes {i}"}],
        "non_preferred_output": [{"role": "assistant", "content": f"no {i}"}]} for i in range(2)]
DOLLY = [{"instruction": f"i{i}", "context": "ctx", "response": f"r{i}", "category": "qa"} for i in range(3)]

FORMATS = [
    ("alpaca.jsonl", jsonl(ALPACA), 5, pb.DATASET_FORMAT_ALPACA, "instruction"),
    ("dolly.json", json.dumps(DOLLY).encode(), 3, pb.DATASET_FORMAT_DOLLY, "instruction"),
    ("chat.jsonl.gz", gz(jsonl(CHAT)), 3, pb.DATASET_FORMAT_CHAT, "chat"),
    ("sharegpt.csv", _csv(["conversations"], SHAREGPT), 4, pb.DATASET_FORMAT_SHAREGPT, "chat"),
    ("pref.parquet", _parquet(PREFERENCE), 3, pb.DATASET_FORMAT_PREFERENCE, "preference"),
    ("dpo.jsonl.zst", zstandard.ZstdCompressor().compress(jsonl(DPO)), 2, pb.DATASET_FORMAT_OPENAI_DPO, "preference"),
    ("text.csv", _csv(["text", "task"], [["some text", "wiki"], ["more text", "news"]]), 2, pb.DATASET_FORMAT_TEXT, "text"),
]


@pytest.mark.parametrize(("name", "data", "rows", "fmt", "kind"), FORMATS, ids=[f[0] for f in FORMATS])
def test_each_format_is_detected_stored_and_read_back(service: DatasetsService, name: str, data: bytes, rows: int,
                                                      fmt: int, kind: str) -> None:
    result = service.upload(data, name, chunk=7)
    assert result.validation.rows_accepted == rows
    assert result.validation.rows_rejected == 0
    assert result.validation.format == fmt
    assert result.version.content_hash.startswith("sha256:")
    preview = service.stub.PreviewRows(pb.PreviewRowsRequest(version_id=result.version.id, limit=10))
    assert len(preview.rows) == rows
    first = preview.rows[0]
    assert first["kind"] == kind
    assert first["provenance"]["source"] == name
    assert first["provenance"]["row"] == 1


def test_dolly_and_task_labels_become_categories(service: DatasetsService) -> None:
    result = service.upload(json.dumps(DOLLY).encode(), "dolly.json")
    stats = service.stub.GetDatasetStats(pb.GetDatasetStatsRequest(version_id=result.version.id))
    assert dict(stats.category_counts) == {"qa": 3}
    assert stats.row_count == 3
    assert stats.turns_percentiles["max"] == 2


BAD_ROWS = [
    (b'{"instruction": "x"}\n', "rows[1].output", "missing"),
    (b'{"instruction": 3, "output": "y"}\n', "rows[1].instruction", "must be a string"),
    (b'{"instruction": "x", "output": "  "}\n', "rows[1].output", "empty assistant turn"),
    (b'{"messages": [{"role": "assistant", "content": "a"}]}\n', "rows[1].messages[0].role", "where 'user' was expected"),
    (b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}\n',
     "rows[1].messages[1].content", "empty assistant turn"),
    (b'{"messages": [{"role": "user", "content": "caf\xff"}, {"role": "assistant", "content": "a"}]}\n', "rows[1]", "invalid UTF-8"),
    (b'{"instruction": "x", "output": "y"\n', "rows[1]", "invalid JSON"),
    (b'[1, 2]\n', "rows[1]", "must be a JSON object"),
    (b'{"messages": [{"role": "wizard", "content": "a"}]}\n', "rows[1].messages[0].role", "use one of"),
]


@pytest.mark.parametrize(("line", "field", "reason"), BAD_ROWS, ids=[b[2] for b in BAD_ROWS])
def test_bad_rows_are_reported_precisely_and_nothing_is_stored(service: DatasetsService, line: bytes, field: str,
                                                               reason: str) -> None:
    good = b'{"instruction": "fine", "output": "ok"}\n' if b"instruction" in line else (
        b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
    data = line + good if not line.startswith(b"[") else line + b'{"text": "t"}\n'
    with pytest.raises(grpc.RpcError) as caught:
        service.upload(data, "bad.jsonl")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = _violations(caught.value)
    assert violations and violations[0][0] == field, violations
    assert reason in violations[0][1]
    assert service.objects() == []
    assert not service.stub.ListDatasets(pb.ListDatasetsRequest()).datasets


def test_skip_policy_stores_good_rows_and_reports_bad_ones(service: DatasetsService) -> None:
    data = jsonl(ALPACA[:2]) + b'{"instruction": "x"}\nnot json\n' + jsonl(ALPACA[2:3])
    result = service.upload(data, "mixed.jsonl", validation_policy=pb.VALIDATION_POLICY_SKIP_INVALID)
    assert (result.validation.rows_read, result.validation.rows_accepted, result.validation.rows_rejected) == (5, 3, 2)
    report = service.stub.GetRejectedRows(pb.GetRejectedRowsRequest(version_id=result.version.id))
    assert report.total == 2
    assert [(r.row, r.field, r.step) for r in report.rows] == [(3, "output", "validate"), (4, "", "validate")]
    rows = service.stub.PreviewRows(pb.PreviewRowsRequest(version_id=result.version.id)).rows
    assert [r["provenance"]["row"] for r in rows] == [1, 2, 5]


def test_malformed_json_array_names_the_row_where_it_broke(service: DatasetsService) -> None:
    data = b'[{"text": "a"}, {"text": "b"}, {"text": "c" ]'
    with pytest.raises(grpc.RpcError) as caught:
        service.upload(data, "broken.json")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(caught.value)[0][0] == "rows[3]"
    assert service.objects() == []


def test_row_size_and_token_limits(service: DatasetsService) -> None:
    long_row = {"instruction": "x", "output": "word " * 50}
    with pytest.raises(grpc.RpcError) as caught:
        service.upload(jsonl([ALPACA[0], long_row]), "tok.jsonl", max_tokens_per_row=20)
    assert _violations(caught.value)[0][0] == "rows[2]"
    assert "over the limit of 20" in _violations(caught.value)[0][1]
    huge = {"text": "x" * (2 << 20)}
    with pytest.raises(grpc.RpcError) as caught:
        service.upload(jsonl([{"text": "ok"}, huge]), "huge.jsonl")
    assert _violations(caught.value)[0] == ("rows[2]", f"row is larger than {1 << 20} bytes: split or shorten it")


def test_undetectable_format_names_the_columns(service: DatasetsService) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        service.upload(jsonl([{"foo": 1, "bar": 2}]), "odd.jsonl")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bar, foo" in _violations(caught.value)[0][1]


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_zip_archive_of_two_files_is_ingested_with_provenance(service: DatasetsService) -> None:
    data = _zip({"a/part1.jsonl": jsonl(ALPACA[:2]), "a/part2.jsonl": jsonl(ALPACA[2:])})
    result = service.upload(data, "bundle.zip")
    assert result.validation.rows_accepted == 5
    rows = service.stub.PreviewRows(pb.PreviewRowsRequest(version_id=result.version.id)).rows
    assert {r["provenance"]["source"] for r in rows} == {"bundle.zip/part1.jsonl", "bundle.zip/part2.jsonl"}


def _tar_with_symlink() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("link.jsonl")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    return buf.getvalue()


ARCHIVE_ATTACKS = [
    ("traversal.zip", _zip({"../evil.jsonl": jsonl(ALPACA)}), grpc.StatusCode.INVALID_ARGUMENT, "'..'"),
    ("absolute.zip", _zip({"/etc/evil.jsonl": jsonl(ALPACA)}), grpc.StatusCode.INVALID_ARGUMENT, "absolute"),
    ("link.tar", _tar_with_symlink(), grpc.StatusCode.INVALID_ARGUMENT, "link"),
    ("bomb.zip", _zip({"zeros.jsonl": b" " * (8 << 20)}), grpc.StatusCode.RESOURCE_EXHAUSTED, "expan"),
    ("bomb.jsonl.gz", gz(b"\n" * (8 << 20)), grpc.StatusCode.RESOURCE_EXHAUSTED, "expan"),
    ("many.zip", _zip({f"f{i}.jsonl": jsonl(ALPACA[:1]) for i in range(25)}), grpc.StatusCode.RESOURCE_EXHAUSTED, "entries"),
]


@pytest.mark.parametrize(("name", "data", "code", "words"), ARCHIVE_ATTACKS, ids=[a[0] for a in ARCHIVE_ATTACKS])
def test_archive_guards(service: DatasetsService, name: str, data: bytes, code: grpc.StatusCode, words: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        service.upload(data, name)
    assert caught.value.code() == code
    assert words in caught.value.details()
    assert service.objects() == []


def test_idempotent_upload_and_tenant_isolation(service: DatasetsService) -> None:
    first = service.upload(jsonl(ALPACA), "a.jsonl", request_id="req-1")
    again = service.upload(jsonl(ALPACA), "a.jsonl", request_id="req-1")
    assert again.version.id == first.version.id
    versions = service.stub.ListDatasetVersions(pb.ListDatasetVersionsRequest(dataset="ds")).versions
    assert [v.id for v in versions] == [first.version.id]
    with pytest.raises(grpc.RpcError) as caught:
        service.other.GetDatasetVersion(pb.GetDatasetVersionRequest(version_id=first.version.id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert not service.other.ListDatasets(pb.ListDatasetsRequest()).datasets
    with pytest.raises(grpc.RpcError) as caught:
        service.anonymous.ListDatasets(pb.ListDatasetsRequest())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert all(key.startswith("tenants/acme/") for key in service.objects())


def test_register_from_the_store_within_the_tenant_only(service: DatasetsService) -> None:
    service.store.put_bytes("tenants/acme/uploads/raw.jsonl", jsonl(ALPACA))
    service.store.put_bytes("tenants/acme2/uploads/raw.jsonl", jsonl(ALPACA))
    result = service.stub.RegisterDataset(pb.RegisterDatasetRequest(
        dataset_name="reg", source_uri=f"{service.store_uri}/tenants/acme/uploads/raw.jsonl"))
    assert result.validation.rows_accepted == 5
    with pytest.raises(grpc.RpcError) as caught:
        service.stub.RegisterDataset(pb.RegisterDatasetRequest(
            dataset_name="reg", source_uri=f"{service.store_uri}/tenants/acme2/uploads/raw.jsonl"))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_leased_version_cannot_be_deleted(service: DatasetsService) -> None:
    version = service.upload(jsonl(ALPACA), "a.jsonl").version
    service.stub.AcquireVersionLease(pb.AcquireVersionLeaseRequest(version_id=version.id, holder="job:1"))
    for call in (lambda: service.stub.DeleteDatasetVersion(pb.DeleteDatasetVersionRequest(version_id=version.id)),
                 lambda: service.stub.DeleteDataset(pb.DeleteDatasetRequest(dataset="ds"))):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "job:1" in caught.value.details()
    released = service.stub.ReleaseVersionLease(pb.ReleaseVersionLeaseRequest(version_id=version.id, holder="job:1"))
    assert released.released
    service.stub.DeleteDataset(pb.DeleteDatasetRequest(dataset="ds"))
    assert service.objects() == []
    with pytest.raises(grpc.RpcError) as caught:
        service.stub.GetDatasetVersion(pb.GetDatasetVersionRequest(version_id=version.id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
