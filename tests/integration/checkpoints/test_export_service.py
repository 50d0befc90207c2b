"""ExportCheckpoint through the service on the real S3 server: merged == peft merge_and_unload."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import torch

from tests.integration.checkpoints.conftest import CheckpointService, register_request
from tuneforge.checkpoints.adapters.objects import folder_key
from tuneforge.checkpoints.v1 import checkpoints_pb2 as pb
from tuneforge.common.storage.checkpoint_writer import CheckpointWriter

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
pytestmark = [pytest.mark.integration, pytest.mark.slow]

INPUT = torch.tensor([[1, 5, 9, 42, 7, 100, 3, 11]])


def _logits(model: torch.nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=INPUT).logits


def test_merged_and_adapter_exports_match_peft(service: CheckpointService, tiny_model_dir: Path,
                                               tmp_path: Path) -> None:
    store = service.store
    CheckpointWriter(store).write(tiny_model_dir, "tenants/acme/models/tiny/")
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(3)
    lora = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                     init_lora_weights=False))
    lora.save_pretrained(tmp_path / "ckpt")
    files = CheckpointWriter(store).write(tmp_path / "ckpt", folder_key("acme", "job1/step-5")).files
    m = service.acme.RegisterCheckpoint(register_request("job1", 5, "job1/step-5", files,
                                                         base_model="tiny")).manifest

    merged = service.acme.ExportCheckpoint(pb.ExportCheckpointRequest(
        checkpoint="job1@latest", format=pb.EXPORT_FORMAT_MERGED), timeout=300)
    assert f"tenants/acme/exports/{m.checkpoint_id}/merged/" in merged.uri
    out = tmp_path / "merged"
    for f in merged.files:
        store.get_file(f"tenants/acme/exports/{m.checkpoint_id}/merged/{f.path}", out / f.path)
    reference = peft.PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "ckpt").merge_and_unload()
    got = _logits(transformers.AutoModelForCausalLM.from_pretrained(out, use_safetensors=True))
    assert torch.allclose(got, _logits(reference), atol=1e-5, rtol=0)

    adapter = service.acme.ExportCheckpoint(pb.ExportCheckpointRequest(
        checkpoint=m.checkpoint_id, format=pb.EXPORT_FORMAT_ADAPTER, destination="prod/adapter"), timeout=300)
    assert {f.path for f in adapter.files} >= {"adapter_config.json", "adapter_model.safetensors"}
    with pytest.raises(grpc.RpcError) as info:
        service.acme.ExportCheckpoint(pb.ExportCheckpointRequest(
            checkpoint=m.checkpoint_id, format=pb.EXPORT_FORMAT_FULL), timeout=60)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_concurrent_identical_exports_all_get_the_one_export(service: CheckpointService, tiny_model_dir: Path,
                                                             tmp_path: Path) -> None:
    import threading

    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(tmp_path / "ckpt")
    files = CheckpointWriter(service.store).write(tmp_path / "ckpt", folder_key("acme", "job2/step-1")).files
    m = service.acme.RegisterCheckpoint(register_request("job2", 1, "job2/step-1", files)).manifest
    request = pb.ExportCheckpointRequest(checkpoint=m.checkpoint_id, format=pb.EXPORT_FORMAT_ADAPTER,
                                         destination="shared/adapter")
    answers: list[object] = []

    def export() -> None:
        try:
            answers.append(service.acme.ExportCheckpoint(request, timeout=300).uri)
        except grpc.RpcError as err:
            answers.append(err.code())
    threads = [threading.Thread(target=export) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(answers) == 5 and len(set(answers)) == 1 and "shared/adapter" in str(answers[0])
    other = pb.ExportCheckpointRequest(checkpoint=m.checkpoint_id, format=pb.EXPORT_FORMAT_MERGED,
                                       destination="shared/adapter")
    with pytest.raises(grpc.RpcError) as info:
        service.acme.ExportCheckpoint(other, timeout=60)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS and "shared/adapter" in (info.value.details() or "")
