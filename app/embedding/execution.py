"""How the forward pass runs: dtype, channels_last, torch.compile with bucketed batch
sizes, intra-op threads. Each option measured in bench/ and documented in docs/runtimes.md."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from app.cpus import usable_cpus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExecutionOptions:
    device: torch.device
    dtype: torch.dtype
    channels_last: bool
    compile: bool
    max_batch_size: int
    threads: int = 0  # intra-op threads of the thread that runs the model; 0: torch's default

    @property
    def buckets(self) -> tuple[int, ...]:
        """Batch sizes a compiled model sees: powers of two up to the maximum, and the
        maximum. Batches are padded up to the next bucket so no request pays a compile."""
        sizes = {self.max_batch_size}
        size = 1
        while size < self.max_batch_size:
            sizes.add(size)
            size *= 2
        return tuple(sorted(sizes))

    def bucket_for(self, batch: int) -> int:
        return next((b for b in self.buckets if b >= batch), batch)


def configure_threads(torch_threads: int) -> int:
    """Intra-op threads: the setting (app/settings resolves 0 to this process's share of the
    cores), else every usable core."""
    threads = torch_threads or usable_cpus()
    torch.set_num_threads(threads)
    return threads


def prepare_model(model: torch.nn.Module, options: ExecutionOptions):
    """The callable that runs the forward pass under these options."""
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # the stubs omit it
    if not options.compile:
        return model
    if options.device.type == "cpu":
        # Freezing folds weights into the graph (constant-folded conv+bn, prepacked bf16
        # GEMMs): on CPU it roughly doubles what compile alone gives.
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
    return torch.compile(model, dynamic=False)
