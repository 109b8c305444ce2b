"""Multi-process training (`torchrun --nproc_per_node=N -m flexnas supernet CONFIG`).

Every rank holds the whole supernet and trains the same arch(s) each step (the strategy's rng is
seeded from (seed, step)) on its own slice of the batch. Instead of wrapping the supernet in
DistributedDataParallel, the trainer averages gradients itself once per step (`GradSync`): a
single-path step leaves most of the supernet without gradients, multi-path strategies call backward
several times per step, and strategies own parameters outside the module (architecture logits) --
DDP would reduce the whole supernet after every backward and miss the latter. Measured comparison:
`benchmarks/ddp_sync.py` and docs/notes/ddp.md.

Collectives here are called by every rank in the same order; the helpers that can fail
(`check_same`, `agree`) raise on *every* rank, so one bad rank never leaves the others waiting.
"""
from __future__ import annotations

import atexit
import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch
import torch.distributed as dist

from flexnas.errors import ConfigError, FlexnasError
from flexnas.train.checkpoint import _flatten  # the same field-by-field view as checkpoint meta checks

__all__ = ["env_world", "rank_and_world", "rank_device", "join", "check_same", "agree", "GradSync",
           "average_", "broadcast_", "check_in_sync", "gather_object"]


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) outside torchrun."""
    try:
        return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise ConfigError("RANK / WORLD_SIZE / LOCAL_RANK must be integers (they are set by torchrun)") from None


def rank_and_world() -> tuple[int, int]:
    """(rank, world_size) of the joined process group, else of torchrun's environment."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    rank, world, _ = env_world()
    return rank, world


def join(device: torch.device) -> tuple[int, int]:
    """Join torchrun's process group (nccl for a CUDA device, gloo otherwise) and stay in it until the
    process exits; returns (rank, world_size).

    A no-op outside torchrun (WORLD_SIZE unset or 1) and when a group already exists. The group is
    not torn down after training: under torchrun a second env:// rendezvous in the same process
    hangs when ranks arrive at different times, so a process joins once."""
    _, world, _ = env_world()
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return rank_and_world()
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed: launch without torchrun")
    if device.type == "cuda":
        torch.cuda.set_device(device)   # nccl and the object collectives use the current device
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    atexit.register(_leave)
    return dist.get_rank(), dist.get_world_size()


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_object(obj: Any) -> list[Any]:
    """`obj` of every rank, in rank order (just [obj] in one process)."""
    if _world() == 1:
        return [obj]
    out: list[Any] = [None] * _world()
    dist.all_gather_object(out, obj)
    return out


def check_same(what: str, values: Mapping[str, Any]) -> None:
    """Raise ConfigError on every rank when any rank's `values` differ from rank 0's, naming the
    fields (nested mappings are compared field by field: `train.lr`, `data.batch_size`)."""
    gathered = gather_object(_flatten(values))
    ref = gathered[0]
    diffs = []
    for rank, other in enumerate(gathered[1:], start=1):
        for key in sorted(set(ref) | set(other)):
            a, b = ref.get(key, "<missing>"), other.get(key, "<missing>")
            if a != b:
                diffs.append(f"{key}: rank 0 has {a!r}, rank {rank} has {b!r}")
    if diffs:
        shown = "; ".join(diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else "")
        raise ConfigError(f"the ranks of this launch disagree on the {what} ({shown}); every rank must "
                          f"get the same config and overrides")


def agree(error: Optional[FlexnasError]) -> None:
    """Re-raise, on every rank, the first user error any rank hit (with its rank), so that a failure
    seen by one rank only (a checkpoint it cannot read) stops all of them instead of a hang."""
    errors = gather_object(None if error is None else (type(error), str(error)))
    for rank, item in enumerate(errors):
        if item is not None:
            if error is not None and rank == _rank():
                raise error
            cls, message = item
            raise cls(f"rank {rank}: {message}")


def _rank() -> int:
    return dist.get_rank() if _world() > 1 else 0


def _by_dtype(tensors: Sequence[torch.Tensor]) -> dict[torch.dtype, list[int]]:
    groups: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(t.dtype, []).append(i)
    return groups


def average_(tensors: Sequence[torch.Tensor]) -> None:
    """Replace each tensor by its mean over ranks, in place: one all-reduce per dtype."""
    world = _world()
    if world == 1 or not tensors:
        return
    for idx in _by_dtype(tensors).values():
        flat = torch.cat([tensors[i].reshape(-1) for i in idx])
        dist.all_reduce(flat)
        flat.div_(world)
        _scatter(flat, [tensors[i] for i in idx])


def broadcast_(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Overwrite each tensor with rank `src`'s copy, in place: one broadcast per dtype."""
    if _world() == 1 or not tensors:
        return
    for idx in _by_dtype(tensors).values():
        flat = torch.cat([tensors[i].reshape(-1) for i in idx])
        dist.broadcast(flat, src)
        _scatter(flat, [tensors[i] for i in idx])


def _scatter(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t))
            offset += n


class GradSync:
    """Average the gradients of `params` over ranks, as one process would get on the combined batch.

    Called once per step after all of the strategy's backward passes. A small mask all-reduce first
    finds the parameters that got a gradient on any rank; only those travel (a single-path step of
    a supernet uses a small fraction of it). A parameter used on some ranks only gets the average
    with zeros from the others; one no rank used keeps `grad=None`, so the optimizer skips it (no
    momentum or weight decay update), exactly as in one process."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sent = 0   # gradient values all-reduced so far (for benchmarks)

    def __call__(self, params: Sequence[torch.nn.Parameter]) -> None:
        world = _world()
        if world == 1 or not params:
            return
        mask = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=self.device)
        dist.all_reduce(mask)
        used = [p for p, m in zip(params, mask.tolist()) if m]
        for p in used:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        average_([p.grad for p in used])
        self.sent += sum(p.numel() for p in used)


def fingerprint(tensors: Sequence[torch.Tensor]) -> str:
    """sha256 over the exact bytes of `tensors` (moved to the CPU)."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_in_sync(tensors: Sequence[torch.Tensor], what: str = "supernet") -> None:
    """Raise RuntimeError on every rank unless all ranks hold bit-identical `tensors`.

    Averaged gradients applied by identical optimizers keep ranks identical; a difference means a
    rank-dependent update slipped in (a bug, not a user error), and continuing would train N
    different networks while checkpointing only rank 0's."""
    prints = gather_object(fingerprint(tensors))
    bad = [r for r, p in enumerate(prints) if p != prints[0]]
    if bad:
        raise RuntimeError(f"the {what} differs between rank 0 and rank(s) {bad}: ranks diverged "
                           f"(a rank-dependent update in a strategy?); stopping instead of saving rank 0's copy")


def rank_device(name: str) -> str:
    """The device this rank trains on: under torchrun, `auto` (with CUDA) and `cuda` mean
    cuda:LOCAL_RANK, one GPU per rank; outside torchrun `name` is returned unchanged."""
    _, world, local = env_world()
    if world <= 1:
        return name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if local >= count:
            raise ConfigError(f"LOCAL_RANK={local} but this machine has {count} GPU(s): launch at most "
                              f"--nproc_per_node={count}")
        return f"cuda:{local}"
    if name.startswith("cuda:") and int(os.environ.get("LOCAL_WORLD_SIZE", 1)) > 1:
        raise ConfigError(f"device '{name}' would put every rank of this node on the same GPU; use "
                          f"device=auto or device=cuda (each rank then takes cuda:LOCAL_RANK)")
    return name
