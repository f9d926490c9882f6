"""Sweeps across several processes or machines: `sweep.backend: ray` (optional extra `mvalign[ray]`).

    driver (this process)                      Ray workers (actors), `sweep.ray.workers` of them
    ─────────────────────                      ───────────────────────────────────────────────
    the sweep's tasks (mixed-ω groups of  ───▶ each loads the base model and the method's adapters ONCE
    candidates, or one candidate alone)        (`CombinedModel`, and `MixedLoRA` when mixed batching is on)
    check each worker's base weights     ◀───  and reports its base weights' fingerprint, then generates
    score every point, write the store   ◀───  the tasks it is given (`sweep.run_task`)

The driver loads no language model, only the judges. Every worker's base weights are checked against the run's
base.json (the fingerprint the run was trained on), so a worker whose machine sees another checkpoint is refused
before it generates anything. The driver is the only process that writes the run's store, scores and keeps the
bookkeeping, so a Ray sweep stores exactly what the local backend stores: with greedy decoding, workers generate
each task as the local backend would (same grouping of rows), so the points are identical. A task whose
worker dies (killed, out of memory, its machine gone) is re-queued on a live worker; a replacement worker is started
in the dead one's place, up to `sweep.ray.restarts` times in one sweep. Points already stored are never sent out,
so a killed driver resumes like a local sweep.

`sweep.ray.address`: null starts a private local cluster bound to 127.0.0.1 (nothing listens beyond loopback) with
`workers × cpus_per_worker` CPUs; an address ('ray://host:10001' or 'auto') joins an existing cluster, whose
workers must see the same model, adapters and cache paths (a shared filesystem).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterator, Sequence

from .config import ConfigError, RunConfig
from .errors import MvalignError
from .sweep import Generated, Task


class WorkerError(MvalignError, RuntimeError):
    """Ray workers could not finish the sweep."""


class SweepWorker:
    """A Ray actor: the base model with the method's adapters, loaded once (mixed-ω hooks when `mixed`)."""

    def __init__(self, cfg_json: dict, adapters: list[tuple[str, str]], combination: str, mixed: tuple | None,
                 threads: int) -> None:
        import torch

        from .combine import CombinedModel
        from .faults import reached
        from .lora import load_lora_adapter
        from .mixed import MixedLoRA
        from .models import cache_root, load_model
        from .sweep import Passes

        reached("load")
        torch.set_num_threads(threads)
        cfg = RunConfig.model_validate(cfg_json)
        model, self.tokenizer = load_model(cfg.model, cache_root(cfg.cache_dir))
        self.combined = CombinedModel(model, [load_lora_adapter(path, name) for name, path in adapters], combination)
        self.passes = None if mixed is None else Passes(MixedLoRA(model, self.combined.adapters), *mixed)

    def pid(self) -> int:
        return os.getpid()

    def identity(self) -> tuple[str, str, str]:
        """(fingerprint, dtype, host) of the base model this worker loaded: the driver checks it against base.json."""
        import socket

        from .rundir import base_identity

        return (*base_identity(self.combined.model), socket.gethostname())

    def run(self, task: Task, prompts, generation, use_chat_template: bool) -> Generated:
        from .faults import reached
        from .sweep import run_task

        reached("task")
        return run_task(self.combined, self.passes, self.tokenizer, task, prompts, generation, use_chat_template)


def loopback_only(ray) -> None:
    """Make the next local `ray.init` bind every server to 127.0.0.1. On Linux Ray resolves 127.0.0.1 to the node's
    network address so that other machines can join; with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (the single-machine
    mode Ray uses on macOS and Windows) it keeps the loopback address. Read at import, hence also set on the module."""
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


class RayBackend:
    """Generation on Ray workers; `run` yields each task's result as it arrives (re-queueing a dead worker's)."""

    def __init__(self, cfg: RunConfig, adapters: Sequence[tuple[str, str]], mixed: tuple | None,
                 check: Callable[[str, str, str], None] | None = None) -> None:
        """`check(fingerprint, dtype, where)`: called with every worker's base model once it is loaded (the driver
        loads no model itself, so this is how a run's base.json is enforced across processes and machines)."""
        try:
            import ray
        except ImportError:
            raise ConfigError("sweep.backend is 'ray' but ray is not installed: `pip install 'mvalign[ray]'`") from None
        self.ray, self.settings = ray, cfg.sweep.ray
        if not ray.is_initialized():
            s = self.settings
            kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if s.address:
                ray.init(address=s.address, **kwargs)
            else:  # a private single-node cluster on loopback only
                loopback_only(ray)
                ray.init(_node_ip_address="127.0.0.1", num_cpus=max(1, round(s.workers * s.cpus_per_worker)),
                         num_gpus=s.workers * s.gpus_per_worker if s.gpus_per_worker else None, **kwargs)
        env = {k: os.environ[k] for k in ("MVALIGN_CACHE_DIR", "HF_HUB_OFFLINE", "TQDM_DISABLE") if k in os.environ}
        self.args = (cfg.model_dump(mode="json"), list(adapters), cfg.sweep.combination, mixed,
                     max(1, int(self.settings.cpus_per_worker)))
        self.env = env
        self.actor = ray.remote(SweepWorker)
        self.restarts, self.check = 0, check
        self.workers = [self._start(i) for i in range(self.settings.workers)]
        try:
            for i, worker in enumerate(self.workers):
                self._verify(worker, i)
        except BaseException:
            self.close()
            raise

    def _verify(self, worker, index: int) -> None:
        """Wait until `worker` has loaded its model and pass its identity to `check`: WorkerError (one line) when it
        could not load, `check`'s error when its base weights are not the run's."""
        try:
            fingerprint, dtype, host = self.ray.get(worker.identity.remote())
        except (self.ray.exceptions.RayActorError, self.ray.exceptions.WorkerCrashedError) as e:
            lines = [x for x in str(e).strip().splitlines() if x.strip()]
            raise WorkerError(f"Ray worker {index} could not load the model and adapters: "
                              f"{lines[-1] if lines else type(e).__name__}") from None
        if self.check is not None:
            self.check(fingerprint, dtype, f"on Ray worker {index} ({host})")

    def _start(self, index: int):
        """A worker. MVALIGN_FAULT (the reliability tests' kill switch, `mvalign.faults`): its `task` part reaches
        worker 0 only, its `load` part the replacements only."""
        role = "task" if index == 0 else "load" if index >= self.settings.workers else None
        mine = [f.strip() for f in os.environ.get("MVALIGN_FAULT", "").split(",") if f.strip().partition("@")[0] == role]
        env = {**self.env, "MVALIGN_FAULT": ",".join(mine)}  # set, so that no worker inherits the driver's
        actor = self.actor.options(
            num_cpus=self.settings.cpus_per_worker, num_gpus=self.settings.gpus_per_worker, max_restarts=0,
            runtime_env={"env_vars": env})
        return actor.remote(*self.args)

    def run(self, tasks: Sequence[Task], prompts, generation, use_chat_template: bool) -> Iterator[Generated]:
        ray = self.ray
        queue = collections.deque(tasks)
        prompts_ref = ray.put(list(prompts))
        running: dict = {}  # object ref -> (worker, task)
        idle = list(self.workers)
        while queue or running:
            while queue and idle:
                worker, task = idle.pop(), queue.popleft()
                running[worker.run.remote(task, prompts_ref, generation, use_chat_template)] = (worker, task)
            ready, _ = ray.wait(list(running), num_returns=1)
            worker, task = running.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as e:
                queue.appendleft(task)  # its points were never stored: generate them again elsewhere
                self.workers.remove(worker)
                if self.restarts >= self.settings.restarts:
                    if not self.workers:
                        raise WorkerError(f"every Ray worker died ({type(e).__name__}); the points stored so far are "
                                          "kept: re-run to finish the sweep") from None
                    continue
                self.restarts += 1
                index = len(self.workers) + self.restarts
                worker = self._start(index)
                try:
                    self._verify(worker, index)
                except WorkerError:  # the replacement did not come up: carry on with the live workers, if any
                    if not self.workers:
                        raise
                    continue
                self.workers.append(worker)
                idle.append(worker)
                continue
            idle.append(worker)
            yield result

    def close(self) -> None:
        for worker in self.workers:
            self.ray.kill(worker)
        self.workers = []
