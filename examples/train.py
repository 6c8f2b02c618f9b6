"""A minimal DDP training script for the job scripts in this directory.

Every rank reports where its interpreter and torch come from (the node-local copy when the
job script delivered the environment), then trains a tiny model for a few steps. It needs
torch in the delivered environment; without torch it only reports.
"""

from __future__ import annotations

import json
import os
import socket
import sys


def main() -> int:
    info = {"host": socket.gethostname(), "rank": os.environ.get("RANK"),
            "executable": sys.executable, "prefix": sys.prefix,
            "virtual_env": os.environ.get("VIRTUAL_ENV") or os.environ.get("CONDA_PREFIX")}
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        print(json.dumps({**info, "torch": None}), flush=True)
        return 0
    info["torch"] = torch.__file__
    dist.init_process_group("gloo")  # RANK, WORLD_SIZE, MASTER_ADDR/PORT come from ezpz-launch
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        loss = model(torch.randn(16, 8)).pow(2).mean()
        loss.backward()
        opt.step()
    info.update(world_size=dist.get_world_size(), loss=round(float(loss), 4))
    dist.barrier()  # no rank tears gloo down while another still talks to it
    del model, opt  # the DDP reducer holds the group: release it before destroying the group
    dist.destroy_process_group()
    print(json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
