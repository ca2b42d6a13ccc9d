"""Where ``pha predict``'s memory goes, chunk by chunk (issue 55): runs ``pha predict`` in this process and,
each time the writer records a whole chunk, appends one JSON line to ``--log``: rows written, CPU seconds,
resident memory (``VmRSS``, its anonymous and file-backed parts, the peak ``VmHWM``), glibc's heap
(``mallinfo2``: the heap's size, what is in use, what is free, the mmapped blocks), Python's allocated
blocks, the live tensors and their bytes, the writer's pending rows and the widest batch of the chunk.
Stops the process once it has used ``--cpu-limit`` CPU seconds (at a chunk's end).

    python benchmarks/predict_memory.py --log <scratch>/run.jsonl --cpu-limit 100 -- \\
        predict --ckpt_path=<ckpt> --data.predict_file=<lines> --predict_output=<scratch>/out.jsonl ...

Run it as ``benchmarks/data_scaling.py`` runs ``pha predict`` (its ``child_env``: one thread, offline).
glibc only (``mallinfo2``, glibc 2.33 or later).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

MIB = 2**20


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2``."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def resident() -> dict[str, int]:
    """``VmRSS``, ``RssAnon``, ``RssFile`` and ``VmHWM`` of this process, in MB."""
    wanted = ("VmRSS", "RssAnon", "RssFile", "VmHWM")
    lines = Path("/proc/self/status").read_text().splitlines()
    return {
        key: int(rest.split()[0]) // 1024 for key, _, rest in (line.partition(":") for line in lines) if key in wanted
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", type=Path, required=True, help="one JSON line per whole chunk written")
    parser.add_argument("--cpu-limit", type=float, required=True, help="CPU seconds before the process ends")
    parser.add_argument("pha", nargs=argparse.REMAINDER, help="-- then pha's arguments (predict ...)")
    args = parser.parse_args()
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2

    import torch

    from pha_lightning.cli import main as pha_main
    from pha_lightning.data import examples
    from pha_lightning.training.callbacks import prediction_writer

    widths: list[int] = []
    collate = examples.PredictCollator.__call__

    def collate_and_note(self: examples.PredictCollator, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate(self, rows)
        widths.append(batch["input_ids"].shape[1])
        return batch

    save_state = prediction_writer.JSONLPredictionWriter.save_state
    log = args.log.open("w")

    def save_state_and_record(self: prediction_writer.JSONLPredictionWriter) -> None:
        save_state(self)
        heap = libc.mallinfo2()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime
        tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor) and not o.is_meta]
        record = {
            "rows": self.written,
            "cpu_s": round(cpu, 1),
            **resident(),
            "heap_mb": heap.arena // MIB,
            "in_use_mb": heap.uordblks // MIB,
            "free_mb": heap.fordblks // MIB,
            "top_mb": heap.keepcost // MIB,
            "mmapped_mb": heap.hblkhd // MIB,
            "mmapped_blocks": heap.hblks,
            "python_blocks": sys.getallocatedblocks(),
            "tensors": len(tensors),
            "tensor_mb": round(sum(t.nelement() * t.element_size() for t in tensors) / MIB, 1),
            "pending_rows": len(self.pending),
            "widest_batch": max(widths, default=None),
        }
        del tensors
        widths.clear()
        log.write(json.dumps(record) + "\n")
        log.flush()
        if cpu > args.cpu_limit:
            os._exit(0)

    examples.PredictCollator.__call__ = collate_and_note
    prediction_writer.JSONLPredictionWriter.save_state = save_state_and_record
    pha_args = args.pha[1:] if args.pha[:1] == ["--"] else args.pha
    sys.argv = ["pha", *pha_args]
    pha_main()


if __name__ == "__main__":
    main()
