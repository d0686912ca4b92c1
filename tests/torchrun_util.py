"""Launch a 2-process CPU/gloo job the way users do (`torchrun --nproc_per_node 2 ...`) for the distributed tests."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (torchrun's static rendezvous needs a concrete one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 300,
             cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """Run `python -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 --master_port P *args`.

    Args:
        args: what follows torchrun's own options (a script path and its arguments, or `-m module ...`).
        env: extra environment entries, on top of os.environ, OMP_NUM_THREADS=1 (two ranks share the 2 CI cores)
            and PYTHONPATH=tests/ + the repository root (worker scripts import the test helpers and this checkout).
        timeout: seconds before subprocess.TimeoutExpired.
        cwd: working directory of the launcher.

    Returns:
        The finished process with text stdout/stderr captured (the caller asserts on returncode).
    """
    tests = Path(__file__).parent
    # tests/ for the helpers, then this checkout (not another installed copy of vfmtok)
    path = os.pathsep.join([str(tests), str(tests.parent)])
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), *map(str, args)]
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
