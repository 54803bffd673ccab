"""Start and end the default process group of a ``torchrun`` launch (used by ``reidkern train``).

Why the order matters. ``torch.distributed.nn.functional`` binds ``group.WORLD`` as the default
``group`` argument of its collectives when it is first imported, and ``DistributedDataParallel``
imports it (through ``torch.distributed._shard``) when the first wrapper is built. If that happens
after ``init_process_group``, those defaults hold the default process group, so
``destroy_process_group`` cannot free it: the backend and its worker threads (gloo's
``pt_gloo_runloop``) stay alive until the interpreter's own finalization. A gloo worker that then
drops the last reference to a tensor Python created (the work of an ``all_reduce`` outlives the
Python call) needs the GIL; once finalization has begun, CPython 3.11 ends such a thread with
``pthread_exit``, whose unwinding through the work's ``noexcept`` destructor calls
``std::terminate``: the process aborts with "terminate called without an active exception" and no
Python traceback (measured with a core dump: ``~AsyncAllreduceWork`` → ``decref_pyobject`` →
``take_gil`` → ``PyThread_exit_thread``). It needs a worker to be late, hence intermittent.

:func:`init_distributed` imports ``torch.distributed.nn`` before the group exists (its defaults
then bind ``None``), and :func:`end_distributed` frees the group while the interpreter is whole:
the backend's destructor waits for its queue and joins its threads, with the GIL released.
"""
import gc
import os

__all__ = ["init_distributed", "end_distributed"]


def init_distributed() -> bool:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1) with no process group yet: create the default group
    (NCCL on the device ``LOCAL_RANK`` when CUDA is available, else gloo), from the environment
    ``torchrun`` sets.

    Returns True when it created the group (end it with :func:`end_distributed` on every rank),
    False otherwise (single process, or a group made by the caller)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    # Before the group exists, so that its collectives' default `group` binds None, not the group
    # (module doc): imported later (by DDP), it would keep the group alive until interpreter exit.
    import torch.distributed.nn  # noqa: F401
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def end_distributed(barrier: bool = True) -> None:
    """Destroy the default process group, after a barrier of all ranks when ``barrier`` (pass
    False on a rank that is failing: the others may never reach it). Call it on every rank once
    its collectives are done and the models wrapped in ``DistributedDataParallel`` are released (a
    wrapper holds the group); a garbage collection first frees wrappers left in reference cycles.
    No-op without a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    if barrier:
        dist.barrier()  # no rank tears down while another still exchanges with it
    dist.destroy_process_group()
