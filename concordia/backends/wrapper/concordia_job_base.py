"""What every module of the grid job wrapper shares: its files, its lines, its Failure.

Standard library only, Python 3.6 or newer, as all of the wrapper (see concordia_job.py).
"""

import os
import sys

#: The wrapper's own files, in every job's input sandbox and so in its directory on the node
#: (concordia-job.sh starts the job). Named concordia_job_*: the job's own files share that
#: directory, and one of theirs called, say, runtime.py must not stand in for the wrapper's.
WRAPPER_FILES = (
    "concordia-job.sh",
    "concordia_job.py",
    "concordia_job_base.py",
    "concordia_job_image.py",
    "concordia_job_runtime.py",
    "concordia_job_status.py",
    "concordia_job_lake.py",
)
CONFIG = "concordia-job.json"
#: What concordia-job.sh sources to start a job without python3 (see concordia_job_shell).
SH_SETTINGS = "concordia-job.env"


class Failure(Exception):
    """What stops a job before its command runs, said in one line."""


def say(message):
    sys.stderr.write("[concordia] " + message + "\n")
    sys.stderr.flush()


def tell(message):
    sys.stdout.write("[concordia] " + message + "\n")
    sys.stdout.flush()


def which(name):
    for directory in os.get_exec_path():
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None
