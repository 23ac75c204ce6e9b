"""The start without python3: what concordia-job.sh reads, written with the wrapper's own code.

A job whose image is already on the node (its unpacked tree, or checked in the node's
cache) is started by concordia-job.sh itself: python3 starting takes longer than
bubblewrap. What sh needs is written here, by the functions that build the command line
(concordia_job_runtime), so that both start exactly the same command; anything else is
left to python3. Concordia runs this module when it submits (concordia-job.env, and the
second argument of a job); a node never does, so it is not in WRAPPER_FILES.
"""

from typing import Any, Dict, List, Optional

from .concordia_job_image import short
from .concordia_job_runtime import (
    CLEARENV_STAMP,
    SCRATCH,
    apptainer_command,
    apptainer_places,
    bwrap_command,
    bwrap_env,
)

#: Characters of an argument that pass as they are in the JDL and through DIRAC's shell.
SH_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-./:=+@")
#: The others concordia-job.sh decodes (as _XX, hex): keep both lists in step.
SH_ESCAPED = frozenset(" !\"#$%&'()*,;<>?[\\]^_`{|}~\t\n")
#: Placeholders for what only the node knows, as sh variables.
_NODE_VALUES = {
    "\0binary\0": '"$cj_binary"',
    "\0image\0": '"$cj_image"',
    "\0here\0": '"$cj_here"',
}
_ARGV = "\0argv\0"


def sh_argument(argv: "List[str]", image_url: "Optional[str]") -> "Optional[str]":
    """The job's second argument, for concordia-job.sh: whether it has an image link (1 or 0),
    then each argument, all ended by ","; None if an argument has a character sh does not
    decode (the job then starts through python3)."""
    words = ["1" if image_url else "0"]
    for arg in argv:
        if not set(arg) <= SH_SAFE | SH_ESCAPED:
            return None
        words.append("".join(c if c in SH_SAFE else f"_{ord(c):02x}" for c in arg))
    return "".join(word + "," for word in words)


def _sh_word(word: str) -> str:
    """``word`` quoted for sh, its placeholders as the variables they stand for."""
    import re
    import shlex

    if word == _ARGV:
        return '"$@"'
    parts = re.split("(" + "|".join(_NODE_VALUES) + ")", word)
    return "".join(_NODE_VALUES.get(part) or shlex.quote(part) for part in parts if part)


def _sh_function(name: str, cmd: "List[str]") -> str:
    """A function of sh that runs ``cmd`` and waits for it."""
    return "{}() {{ {}; }}".format(name, " ".join(_sh_word(word) for word in cmd))


def shell_settings(config: "Dict[str, Any]") -> "Optional[str]":
    """What concordia-job.sh sources (concordia-job.env) for a submission's jobs: shell-quoted
    assignments and the two command lines, with $cj_binary, $cj_image and $cj_here for what
    only the node knows; None for jobs without an image (they start through python3)."""
    import re
    import shlex

    image = config.get("image")
    if image is None:
        return None
    network = bool(config.get("network"))
    binary, path, here = _NODE_VALUES
    places = apptainer_places(config)
    values = {
        "sha256": image["sha256"],
        "short": short(image),
        "unpacked": image.get("unpacked") or "",
        "cache_dir": config.get("cache_dir") or "",
        "apptainer_dirs": "\n".join(places),
        "places": ", ".join(places),
        "scratch": SCRATCH,
        "clearenv_stamp": CLEARENV_STAMP,
    }
    lines = [
        "# concordia-job.sh's settings for this submission's jobs, written by Concordia with",
        "# concordia_job.py's own command builders (the same command, without python3).",
        "cj_settings=1",
        *(f"cj_{name}={shlex.quote(value)}" for name, value in values.items()),
        # Its data to the data lake after the command: python3's work (store_outputs).
        "cj_datalake={}".format(1 if config.get("datalake") else 0),
        _sh_function(
            "cj_run_apptainer", apptainer_command(binary, path, image, [_ARGV], network, here)
        ),
    ]
    env = bwrap_env(image)
    # Bubblewrap gets the image's environment alone: it sets it itself (--clearenv) or sh
    # exports it, so its names must be ones sh can export; else python3 starts such jobs.
    if all(re.fullmatch("[A-Za-z_][A-Za-z0-9_]*", name) for name in env):
        exports = " ".join(shlex.quote(f"{n}={v}") for n, v in sorted(env.items()))
        lines.append("cj_bwrap=1")
        lines.append(f"cj_bwrap_env() {{ export {exports}; }}")
        lines.append("cj_bwrap_unenv() {{ unset {}; }}".format(" ".join(sorted(env))))
        for name, clearenv in (("cj_run_bwrap", False), ("cj_run_bwrap_clean", True)):
            cmd = bwrap_command(binary, path, image, [_ARGV], network, here, clearenv)
            lines.append(_sh_function(name, cmd))
    return "\n".join(lines) + "\n"
