"""A stand-in SLURM for tests: `sbatch`, `srun` and `sacct` scripts that run jobs on this machine.

No SLURM exists here, so ``bench run --launcher submitit --cluster slurm`` is tested against these:
submitit's real ``SlurmExecutor`` writes its real sbatch file, calls ``sbatch`` and parses the
job id from its answer, its jobs read the SLURM environment variables and its watcher polls
``sacct`` — only the scheduler is fake. ``sbatch`` answers at once and hands the script to a
detached runner that runs each array task in turn (in index order, as SLURM starts an array
under a parallelism limit), with the variables a SLURM array task gets, through ``bash`` (the
``#SBATCH`` lines are comments to it); ``srun`` resolves its ``--output``/``--error`` patterns and
runs the command; ``sacct`` reports what the runner recorded. Every sbatch file is kept as
``<state>/sbatch-<job id>.sh`` for the test to read.

    bin_dir = fake_slurm.install(tmp_path / "slurm")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
"""

from __future__ import annotations

import sys
from pathlib import Path

SBATCH = r'''
import os, re, shutil, subprocess, sys, time
from pathlib import Path

STATE = Path(__STATE__)


def run(job_id, script, indices):
    """The detached runner: each array task in index order, with SLURM's variables."""
    text = Path(script).read_text()
    folder = text.split("submitit.core._submit", 1)[1].split()[0].strip("'\"")
    for i in indices or [None]:
        name = f"{job_id}_{i}" if i is not None else job_id
        env = dict(os.environ, SLURM_JOB_ID=name if i is None else str(int(job_id) * 1000 + int(i)),
                   SLURM_NTASKS="1", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0",
                   SLURM_JOB_NUM_NODES="1", SLURM_JOB_NODELIST="localhost")
        if i is not None:
            env.update(SLURM_ARRAY_JOB_ID=job_id, SLURM_ARRAY_TASK_ID=i)
        # submitit moves an array's pickles into place after sbatch has answered: wait for them
        pickle = Path(folder.replace("%j", name)) / f"{name}_submitted.pkl"
        deadline = time.time() + 120
        while not pickle.exists() and time.time() < deadline:
            time.sleep(0.1)
        (STATE / name).write_text("RUNNING")
        rc = subprocess.call(["bash", script], env=env)
        (STATE / name).write_text("COMPLETED" if rc == 0 else "FAILED")


if sys.argv[1] == "--run":
    run(sys.argv[2], sys.argv[3], sys.argv[4:])
    sys.exit(0)
script = Path(sys.argv[-1])
counter = STATE / "next_id"
job_id = int(counter.read_text()) if counter.exists() else 4200
counter.write_text(str(job_id + 1))
kept = STATE / f"sbatch-{job_id}.sh"
shutil.copy(script, kept)
m = re.search(r"^#SBATCH --array=(\d+)-(\d+)", script.read_text(), re.M)
indices = [str(i) for i in range(int(m.group(1)), int(m.group(2)) + 1)] if m else []
for i in indices or [None]:
    (STATE / (f"{job_id}_{i}" if i is not None else str(job_id))).write_text("PENDING")
subprocess.Popen([sys.executable, __file__, "--run", str(job_id), str(kept), *indices], start_new_session=True,
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(f"Submitted batch job {job_id}")
'''

SRUN = r'''
import os, subprocess, sys

args, out, err = sys.argv[1:], None, None
while args and args[0].startswith("-"):
    opt = args.pop(0)
    if opt in ("--output", "--error"):
        value = args.pop(0)
        for k, v in (("%A", os.environ.get("SLURM_ARRAY_JOB_ID", "")), ("%a", os.environ.get("SLURM_ARRAY_TASK_ID", "")),
                     ("%j", os.environ.get("SLURM_JOB_ID", "")), ("%t", "0")):
            value = value.replace(k, v)
        if opt == "--output":
            out = value
        else:
            err = value
with open(out or os.devnull, "a") as o, open(err or out or os.devnull, "a") as e:
    sys.exit(subprocess.call(args, stdout=o, stderr=e))
'''

SACCT = r'''
import sys
from pathlib import Path

STATE = Path(__STATE__)
wanted = [sys.argv[i + 1] for i, a in enumerate(sys.argv) if a == "-j"]
print("JobID|State|NodeList")
for f in sorted(STATE.iterdir()):
    if f.name.split("_")[0] in wanted and not f.name.startswith(("sbatch-", "next_id")):
        print(f"{f.name}|{f.read_text()}|localhost")
'''


def install(root: Path) -> Path:
    """Write ``sbatch``, ``srun`` and ``sacct`` into ``root/bin``; returns that directory (put it
    first on ``PATH``). Job states and the submitted sbatch files go to ``root/state``."""
    bin_dir, state = root / "bin", root / "state"
    bin_dir.mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    for name, body in (("sbatch", SBATCH), ("srun", SRUN), ("sacct", SACCT)):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n" + body.replace("__STATE__", repr(str(state))))
        path.chmod(0o755)
    return bin_dir
