"""A launch that asks accelerate for a backend it did not set up is refused, not silently run as another one."""

from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType

from training.common import check_distributed_request


def _accel(dt, n=1, device="cpu"):
    return SimpleNamespace(distributed_type=dt, num_processes=n, device=device)


@pytest.mark.parametrize("env,name", [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DEEPSPEED")])
def test_launch_mismatch_is_refused(monkeypatch, env, name):
    monkeypatch.setenv(env, "true")
    with pytest.raises(
        RuntimeError, match=f"accelerate launch requested {name} .* but the Accelerator runs MULTI_CPU on cpu"
    ) as e:
        check_distributed_request(_accel(DistributedType.MULTI_CPU, 2), 2)
    assert "cpu_ddp.yaml" in str(e.value)


def test_matching_launches_pass_and_a_process_count_mismatch_is_refused(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    check_distributed_request(_accel(DistributedType.MULTI_CPU, 2), 2)
    check_distributed_request(_accel(DistributedType.NO, 1), 1)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    check_distributed_request(_accel(DistributedType.FSDP, 2, "cuda:0"), 2)
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    with pytest.raises(RuntimeError, match="the launcher started 2 processes"):
        check_distributed_request(_accel(DistributedType.NO, 1), 2)
