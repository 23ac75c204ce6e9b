#!/bin/sh
# Concordia's job on a grid worker node (the JDL's Executable): the Python wrapper beside
# this script fetches the image and runs the command; python3 is all a node needs.
#
# A job whose image is already on the node starts here, without python3 (which takes longer
# to start than bubblewrap): the command line is concordia-job.env's, written by Concordia
# with the Python wrapper's own code. Anything else (no such settings, an image not yet
# fetched and checked, no runtime found, a cache that is not this user's) goes to python3,
# which also tells DiracX the command's exit code. Only shell builtins run before the
# command: starting any other program costs about as much as the whole budget.
# Variables are cj_*: the command's environment must be the node's as it came.

case $0 in
*/*) cj_dir=${0%/*} ;;
*) cj_dir=. ;;
esac

cj_python() {
    # -I -S: the node's PYTHON* variables and site packages play no part (and start is quicker).
    exec python3 -I -S "$cj_dir/concordia_job.py" "$@"
}

# The character of a _XX escape of concordia_job_shell.sh_argument (its SH_ESCAPED), into $cj_c.
cj_unescape() {
    case $1 in
    20) cj_c=' ' ;; 21) cj_c='!' ;; 22) cj_c='"' ;; 23) cj_c='#' ;; 24) cj_c='$' ;;
    25) cj_c='%' ;; 26) cj_c='&' ;; 27) cj_c="'" ;; 28) cj_c='(' ;; 29) cj_c=')' ;;
    2a) cj_c='*' ;; 2c) cj_c=',' ;; 3b) cj_c=';' ;; 3c) cj_c='<' ;; 3e) cj_c='>' ;;
    3f) cj_c='?' ;; 5b) cj_c='[' ;; 5c) cj_c='\' ;; 5d) cj_c=']' ;; 5e) cj_c='^' ;;
    5f) cj_c='_' ;; 60) cj_c='`' ;; 7b) cj_c='{' ;; 7c) cj_c='|' ;; 7d) cj_c='}' ;;
    7e) cj_c='~' ;; 09) cj_c='	' ;;
    0a) cj_c='
' ;;
    *) return 1 ;;
    esac
}

# One argument as sh_argument escaped it, into $cj_word.
cj_decode() {
    cj_rest=$1 cj_word=
    while :; do
        case $cj_rest in
        *_*)
            cj_word=$cj_word${cj_rest%%_*}
            cj_rest=${cj_rest#*_}
            cj_unescape "${cj_rest%"${cj_rest#??}"}" || return 1
            cj_word=$cj_word$cj_c
            cj_rest=${cj_rest#??}
            ;;
        *)
            cj_word=$cj_word$cj_rest
            return 0
            ;;
        esac
    done
}

# The first executable file $1 on PATH, into $cj_found (as the Python wrapper's which).
cj_on_path() {
    cj_found=
    IFS=:
    for cj_path_dir in ${PATH-/bin:/usr/bin}; do
        case $cj_path_dir in '') cj_candidate=$1 ;; *) cj_candidate=$cj_path_dir/$1 ;; esac
        if [ -f "$cj_candidate" ] && [ -x "$cj_candidate" ]; then
            cj_found=$cj_candidate
            break
        fi
    done
    IFS=$cj_ifs
    [ -n "$cj_found" ]
}

# A path of the node's cache this user may trust: its own (another user's is refused, as
# anything another user could have put in place), not a link that could point elsewhere.
cj_own() {
    [ -O "$1" ] && [ ! -L "$1" ]
}

# The node's cache itself: this user's, and marked sticky by the Python wrapper once it
# found it closed to others (sh has no builtin to read a mode: a numeric chmod clears that
# bit, and while it is set no one else can rename or replace this user's files in it).
cj_own_cache() {
    cj_own "$1" && [ -d "$1" ] && [ -k "$1" ]
}

# Nothing exported of what `export -p` said ($1): bubblewrap gets the image's environment
# alone, as execve gives it in the Python wrapper's call().
cj_clear_env() {
    IFS='
'
    for cj_line in $1; do
        case $cj_line in "export "*) ;; *) continue ;; esac
        cj_name=${cj_line#export }
        cj_name=${cj_name%%=*}
        case $cj_name in cj_* | '' | [0-9]* | *[!A-Za-z0-9_]*) continue ;; esac
        unset "$cj_name"
    done
    IFS=$cj_ifs
}

cj_ifs=$IFS
cj_settings= cj_bwrap= cj_cache= cj_datalake= cj_clean=
[ $# -eq 2 ] && [ -f "$cj_dir/concordia-job.env" ] || cj_python "$@"
. "$cj_dir/concordia-job.env"
[ "$cj_settings" = 1 ] || cj_python "$@"

# The command, from the second argument: its link flag, then each argument ended by ",".
case $2 in [01],*) ;; *) cj_python "$@" ;; esac
cj_job=$1 cj_sh_arg=$2
cj_has_url=${2%%,*}
cj_words=${2#*,}
set -f
set --
IFS=,
for cj_escaped in $cj_words; do
    IFS=$cj_ifs
    cj_decode "$cj_escaped" || cj_python "$cj_job" "$cj_sh_arg"
    set -- "$@" "$cj_word"
done
IFS=$cj_ifs
set +f

# The runtime, in the order and with the reasons of the Python wrapper's find_runtime.
cj_kind=
if cj_on_path apptainer; then
    cj_kind=apptainer cj_binary=$cj_found cj_why="on PATH"
else
    IFS='
'
    for cj_place in $cj_apptainer_dirs; do
        if [ -x "$cj_place/apptainer" ]; then
            cj_kind=apptainer cj_binary=$cj_place/apptainer
            cj_why="from $cj_place (none on PATH)"
            break
        fi
    done
    IFS=$cj_ifs
    if [ -n "$cj_kind" ]; then
        :
    elif cj_on_path singularity; then
        cj_kind=singularity cj_binary=$cj_found
        cj_why="on PATH (no apptainer on PATH or in $cj_places)"
    elif cj_on_path bwrap; then
        cj_kind=bwrap cj_binary=$cj_found
        cj_why="no apptainer or singularity (on PATH or in $cj_places)"
    fi
fi
[ -n "$cj_kind" ] || cj_python "$cj_job" "$cj_sh_arg"  # it says there is none
case $cj_binary in */*) ;; *) cj_python "$cj_job" "$cj_sh_arg" ;; esac  # found from ""
if [ "$cj_kind" = bwrap ] && [ "$cj_bwrap" != 1 ]; then
    cj_python "$cj_job" "$cj_sh_arg"  # an environment sh cannot give
fi

# The job's directory as python3's os.getcwd() says it (links resolved); PWD and OLDPWD
# as they were, for the command's environment.
cj_pwd=$PWD cj_oldpwd=${OLDPWD-} cj_oldpwd_set=${OLDPWD+1}
cd -P . || cj_python "$cj_job" "$cj_sh_arg"
cj_here=$PWD
PWD=$cj_pwd
if [ -n "$cj_oldpwd_set" ]; then OLDPWD=$cj_oldpwd; else unset OLDPWD; fi

# The image: its unpacked tree in place, else checked in this user's node cache.
if [ -n "$cj_unpacked" ] && [ -d "$cj_unpacked" ]; then
    cj_image=$cj_unpacked
    cj_where="in place from $cj_unpacked"
else
    [ "$cj_has_url" = 1 ] || cj_python "$cj_job" "$cj_sh_arg"  # it says the image is missing
    # The cache as the Python wrapper's cache_dir chooses it: the first base where
    # concordia-images-<uid> is this user's. sh has no builtin that gives the uid (read from
    # /proc/self/status a byte at a time, it took a tenth of the whole start), so it takes a
    # cache of its own by that name from the first base holding one. A base without one
    # is python3's to decide (it makes the cache there, or finds the name another user's
    # and goes on), as is a cache not yet marked.
    cj_cache=
    for cj_base in "${CONCORDIA_NODE_IMAGE_CACHE-}" "$cj_cache_dir" /var/tmp /tmp; do
        [ -n "$cj_base" ] || continue
        for cj_candidate in "$cj_base"/concordia-images-[0-9]*; do
            if cj_own_cache "$cj_candidate"; then
                cj_cache=$cj_candidate
                break 2
            fi
        done
        cj_python "$cj_job" "$cj_sh_arg"
    done
    [ -n "$cj_cache" ] || cj_python "$cj_job" "$cj_sh_arg"
    # Checked by the job that fetched it: the stamp it wrote after the sha256 matched.
    cj_image=$cj_cache/$cj_sha256.sqsh
    cj_own "$cj_image.verified" && [ -f "$cj_image.verified" ] || cj_python "$cj_job" "$cj_sh_arg"
    cj_own "$cj_image" && [ -f "$cj_image" ] || cj_python "$cj_job" "$cj_sh_arg"
    if [ "$cj_kind" = bwrap ]; then
        cj_image=$cj_cache/$cj_sha256.rootfs
        cj_own "$cj_image" && [ -d "$cj_image" ] || cj_python "$cj_job" "$cj_sh_arg"
        # python3 found that this bubblewrap clears the environment itself (--clearenv), and
        # it has not changed since.
        cj_stamp=$cj_cache/$cj_clearenv_stamp
        if cj_own "$cj_stamp" && [ -f "$cj_stamp" ] && [ ! "$cj_binary" -nt "$cj_stamp" ] &&
            read -r cj_line <"$cj_stamp" && [ "$cj_line" = "$cj_binary" ]; then
            cj_clean=1
        fi
    fi
    cj_where="from the node's cache $cj_cache"
fi

if [ "$cj_kind" != bwrap ]; then
    mkdir -p "$cj_here/$cj_scratch" || cj_python "$cj_job" "$cj_sh_arg"
fi
printf '[concordia] runtime: %s (%s), %s\n' "$cj_kind" "$cj_binary" "$cj_why"
printf '[concordia] image %s: %s\n' "$cj_short" "$cj_where"
printf '[concordia] running %s\n' "$*" >&2

# The command as the wrapper's child (a simple command: vfork, the quickest start sh has),
# its status reported as the Python wrapper reports it.
if [ "$cj_clean" = 1 ]; then
    cj_run_bwrap_clean "$@"
    cj_code=$?
elif [ "$cj_kind" = bwrap ]; then
    # The node's environment set aside, then unset: bubblewrap gets the image's alone, as
    # execve gives it in the Python wrapper's call(). A fork ($(export -p)) costs less
    # than a file of it, whose inode a busy filesystem may be slow to give.
    cj_exported=$(export -p)
    cj_clear_env "$cj_exported"
    cj_bwrap_env
    cj_run_bwrap "$@"
    cj_code=$?
    # The node's environment again, for python3.
    cj_bwrap_unenv
    eval "$cj_exported"
else
    cj_run_apptainer "$@"
    cj_code=$?
fi
if [ "$cj_datalake" = 1 ]; then
    # Its data to the data lake (a failure there fails the job), then its status.
    python3 -I -S "$cj_dir/concordia_job.py" --exited "$cj_code" "$cj_job"
    exit
fi
if [ -n "${DIRACJOBID-}" ]; then
    python3 -I -S "$cj_dir/concordia_job.py" --exited "$cj_code"
fi
exit "$cj_code"
