"""Concordia's job wrapper on a grid worker node: get the job's image, run its command in it.

Shipped in every DiracX job's input sandbox with the other files of WRAPPER_FILES (its
modules concordia_job_*.py) and run by DIRAC's own job wrapper with the node's python3
(3.6 or newer, standard library only: nothing of Concordia is installed on a node).
Usage: concordia_job.py ARG, where ARG is base64 (urlsafe) of the job's JSON
  {"argv": [...], "image_url": null | "https://...signed, per job"}
and the submission's settings are in concordia-job.json beside this file:
  {"image": null | {"id", "sha256", "workdir", "env", "unpacked": null | "/cvmfs/...",
             "registry": null | {"oci": "host/name:id", "squashfs": "host/name:id"}},
   "network": bool, "diracx_url": str, "apptainer_dirs": [...], "cache_dir": str}
The image runs in place from its unpacked tree when the node has that path (CVMFS), else
its SquashFS is fetched once per node into a shared cache, checked against its sha256 once,
and reused. The runtime is apptainer (on PATH, then under CVMFS), singularity, or bubblewrap.
The command's exit status is the wrapper's, and it becomes the job's application status in
DiracX; whatever stops a job before its command runs is one line on std.err and there too.
A job whose image is on the node already is started by concordia-job.sh without python3,
with what shell_settings wrote (concordia-job.env) and its second argument (sh_argument);
it then runs `concordia_job.py --exited N` to tell DiracX the exit code.
This module reads the arguments and runs the job; its siblings do the rest: the image
(concordia_job_image), the runtime (concordia_job_runtime), the application status
(concordia_job_status), the data lake (concordia_job_lake), concordia-job.sh's settings
(concordia_job_shell, Concordia's alone).
"""

# Only what every job needs is imported here: a job whose image is in the node's cache
# starts without the rest (urllib alone takes longer to import than bubblewrap to start).
import binascii
import json
import os
import sys

if not __package__:
    # Run as a script (python3 -I -S, as a node runs it, leaves this file's directory off
    # sys.path): that directory becomes the package of the wrapper's modules, which import
    # one another relatively, as they do in Concordia (concordia.backends.wrapper). The
    # job's other files never stand in for a module of the standard library. Nothing is
    # compiled to a file: a job's directory is new, each job compiles its modules anyway.
    __package__ = "concordia_wrapper"
    sys.dont_write_bytecode = True
    _package = type(sys)(__package__)
    _package.__path__ = [os.path.dirname(os.path.abspath(__file__))]
    sys.modules[__package__] = _package

from .concordia_job_base import CONFIG, Failure, say, which
from .concordia_job_status import EXITED, report

URLSAFE = str.maketrans("-_", "+/")


def lake_settings(config, job):
    """The job's data-lake settings: the submission's, with the job's own name prefix."""
    lake = config.get("datalake")
    if not lake:
        return None
    lake = dict(lake)
    if (job or {}).get("datalake_names") is not None:
        lake["names"] = job["datalake_names"]
    if (job or {}).get("datalake_token_url"):
        lake["token_url"] = job["datalake_token_url"]
    return lake


def run(config, job):
    argv = [str(a) for a in job["argv"]]
    image = config.get("image")
    # A job without an image runs on the node as DIRAC started it (env None: the node's).
    cmd, env = argv, None
    if image is not None:
        from .concordia_job_runtime import container_command

        cmd, env = container_command(config, image, job.get("image_url"), argv)
    say("running " + " ".join(argv))
    return call(cmd, env)


def call(cmd, env):
    """Run ``cmd`` and wait: its exit status, 128 + N for signal N as a shell says it (fork
    and exec: the subprocess module is slower to import than this job is to start)."""
    program = cmd[0] if os.sep in cmd[0] else which(cmd[0])
    if program is None or not os.access(program, os.X_OK):
        raise Failure(f"cannot start {cmd[0]}: not found or not executable")
    pid = os.fork()
    if pid == 0:  # the child: the command, or 127 and why
        try:
            os.execve(program, cmd, os.environ if env is None else env)  # noqa: S606
        except OSError as exc:
            say(f"cannot start {cmd[0]}: {exc.strerror}")
        os._exit(127)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:  # Python 3.6 does not retry it itself everywhere
            continue
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def exited(code, arg=None):
    """concordia-job.sh's report of a command it started itself: its data stored if it
    succeeded, its exit code to DiracX (the job's own exit code, or 1 if its data failed)."""
    here = os.path.dirname(os.path.abspath(__file__))
    config = {}
    try:
        with open(os.path.join(here, CONFIG)) as fh:
            config = json.load(fh)
    except (OSError, ValueError) as exc:
        say(f"could not set the application status in DiracX: {exc}")
        return 1 if code == 0 and arg is not None else code
    try:
        if code == 0:
            lake = lake_settings(config, decode_job(arg) if arg else None)
            if lake:
                from .concordia_job_lake import store_outputs

                store_outputs(lake)
    except Failure as failure:
        return failed(config, str(failure), 1)
    except Exception as exc:  # one line, never a traceback, on a node
        return failed(config, f"wrapper error: {type(exc).__name__}: {exc}", 1)
    report(config, EXITED.format(code))
    return code


def failed(config, message, code):
    say(message)
    report(config, message)
    return code


def decode_job(arg):
    """The job's JSON from its base64 (urlsafe, maybe without padding) argument."""
    padded = arg + "=" * (-len(arg) % 4)
    return json.loads(binascii.a2b_base64(padded.translate(URLSAFE).encode()).decode())


def main(args):
    if len(args) in (2, 3) and args[0] == "--exited":
        return exited(int(args[1]), args[2] if len(args) == 3 else None)
    # A second argument is concordia-job.sh's own form of the command (sh_argument).
    if len(args) not in (1, 2):
        say("usage: concordia_job.py ARG [SH_ARG] (base64 of the job's JSON)")
        return 2
    config = {}
    try:
        job = decode_job(args[0])
        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, CONFIG)) as fh:
            config = json.load(fh)
        code = run(config, job)
        lake = lake_settings(config, job)
        if code == 0 and lake:
            from .concordia_job_lake import store_outputs

            store_outputs(lake)  # a failure here fails the job: never Done without its data
    except Failure as failure:
        message = str(failure)
        code = 127 if message.startswith("cannot start") else 1
    except Exception as exc:  # one line, never a traceback, on a node
        message = f"wrapper error: {type(exc).__name__}: {exc}"
        code = 1
    else:
        report(config, EXITED.format(code))
        return code
    return failed(config, message, code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
