"""DistributedDataParallel over the C++ nets: 2 CPU processes with gloo. DDP must broadcast rank 0's
weights into the C++ module of rank 1 and all-reduce the gradients the C++ backward produces."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dtc import models

KW = dict(base=4)


def _input(rank):
    return torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(100 + rank))


def _loss(out):
    logits, local, global_ = out
    return logits.square().mean() + local.mean() + global_.mean()


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)  # different initialisation per rank: DDP must overwrite rank 1's
        net = models.create("student", **KW).eval()
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        net.check_shared()
        _loss(ddp(_input(rank))).backward()
        torch.save({"params": {k: v.detach().clone() for k, v in net.cpp_module().named_parameters().items()},
                    "grads": {k: v.grad.clone() for k, v in net.cpp_module().named_parameters().items()}},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_ddp_two_processes_on_cpu(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    torch.manual_seed(0)
    reference = models.create("student", **KW).eval()
    for name, p in reference.cpp_module().named_parameters().items():
        assert torch.equal(r0["params"][name], p)  # rank 0 kept its initialisation
        assert torch.equal(r1["params"][name], p)  # rank 1 received it
    # The averaged gradient equals the gradient of the mean loss over both ranks' inputs.
    loss = 0.5 * (_loss(reference(_input(0))) + _loss(reference(_input(1))))
    loss.backward()
    for name, p in reference.cpp_module().named_parameters().items():
        assert torch.equal(r0["grads"][name], r1["grads"][name]), name
        torch.testing.assert_close(r0["grads"][name], p.grad, rtol=1e-5, atol=1e-7)
