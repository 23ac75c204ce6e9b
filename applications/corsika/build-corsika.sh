#!/bin/sh
# Builds CORSIKA 7.7x non-interactively, configured the way CTA simulations use it, and
# installs it to /opt/corsika:
#   /opt/corsika/bin/corsika   the executable
#   /opt/corsika/data/         its data tables (DATDIR) and the atmprof*.dat profiles
#   /opt/corsika/BUILD-INFO    version, models and options, for provenance
#
# Usage: build-corsika.sh HE_MODEL LE_MODEL
#   HE_MODEL  qgsjet-ii-04 | epos-lhc | sibyll-2.3d
#   LE_MODEL  urqmd | gheisha | fluka
#
# The source is the operator's CORSIKA tarball (CORSIKA is distributed to registered users
# only), placed at $CORSIKA_SOURCE (default /build/corsika.tar.gz) before this runs. Either
# KIT's corsika-77xxx.tar.gz or CTA's corsika7.7_simtelarray bundle (which holds
# corsika-77xxx.tar.gz, a newer IACT/ATMO package and sim_telarray's atmprof files) will do.
#
# Options, as in CTA's production builds: detector geometry VOLUMEDET; CERENKOV, IACT (the
# multi-telescope photon output of the IACT/ATMO package), VIEWCONE (diffuse primaries) and
# ATMEXT (tabulated atmospheres atmprofNN.dat); flat atmosphere (CTA builds CURVED variants
# for zenith angles beyond the 60 deg offered here). coconut, CORSIKA's interactive build
# tool, drives autoconf's configure; this script calls configure with the same choices.
#
# FLUKA (le_model fluka) has its own licence and download (fluka.cern / fluka.org) and is
# not part of CORSIKA: bundle a built FLUKA 2011.2x directory (one holding flukapro/ and
# libflukahp.a) inside the CORSIKA tarball, or set FLUPRO to one; without it this fails.
#
# Every step fails loudly; the build tree and the source tarball are removed at the end.
set -eu

HE_MODEL=${1:-}
LE_MODEL=${2:-}
SOURCE=${CORSIKA_SOURCE:-/build/corsika.tar.gz}
PREFIX=${CORSIKA_PREFIX:-/opt/corsika}
FLUKA_PREFIX=${FLUKA_PREFIX:-/opt/fluka}
# The CTA site profiles the job script uses: Paranal (26) and La Palma (36).
REQUIRED_PROFILES="atmprof26.dat atmprof36.dat"

say() { echo "build-corsika: $*"; }
die() {
    echo "build-corsika: ERROR: $*" >&2
    exit 1
}
show_log() { # the end of a failed step's log, so the build log says why
    echo "----- last lines of $1 -----" >&2
    tail -n "${2:-60}" "$1" >&2 || true
    echo "-----" >&2
}

case $HE_MODEL in
    qgsjet-ii-04) CORHEMODEL=QGSJETII ;;
    epos-lhc) CORHEMODEL=EPOS ;;
    sibyll-2.3d) CORHEMODEL=SIBYLL ;;
    *) die "unknown high-energy model '$HE_MODEL' (qgsjet-ii-04, epos-lhc or sibyll-2.3d)" ;;
esac
case $LE_MODEL in
    urqmd) CORLEMODEL=URQMD ;;
    gheisha) CORLEMODEL=GHEISHA ;;
    fluka) CORLEMODEL=FLUKA ;;
    *) die "unknown low-energy model '$LE_MODEL' (urqmd, gheisha or fluka)" ;;
esac

[ -f "$SOURCE" ] || die "no CORSIKA source at $SOURCE: the operator provides it as
    sources.corsika (url + sha256) in Concordia's settings"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/corsika-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

# ---- unpack and find the CORSIKA tree ---------------------------------------------------
say "unpacking $SOURCE"
mkdir "$WORK/src"
tar -xf "$SOURCE" -C "$WORK/src" || die "cannot unpack $SOURCE (not a tar archive?)"

find_corsika() { # the directory holding CORSIKA's configure script and bernlohr/
    find "$WORK/src" -maxdepth 3 -type f -name configure |
        while read -r conf; do
            dir=$(dirname "$conf")
            if [ -d "$dir/bernlohr" ] && [ -d "$dir/src" ]; then
                echo "$dir"
                break
            fi
        done
}
CORSIKA=$(find_corsika)
if [ -z "$CORSIKA" ]; then # CTA's bundle: CORSIKA is a tarball inside the tarball
    inner=$(find "$WORK/src" -maxdepth 2 -type f -name 'corsika-7*.tar.*' | sort | tail -n 1)
    [ -n "$inner" ] || die "no CORSIKA 7 source tree (corsika-7xxxx/ with configure, src/ and
    bernlohr/) and no corsika-7xxxx.tar.* in $SOURCE"
    say "unpacking $(basename "$inner") from the bundle"
    tar -xf "$inner" -C "$WORK/src" || die "cannot unpack $inner"
    CORSIKA=$(find_corsika)
    [ -n "$CORSIKA" ] || die "$(basename "$inner") holds no CORSIKA 7 source tree"
fi
VERSION=$(sed -n "s/^PACKAGE_VERSION='\([0-9]*\)'.*/\1/p" "$CORSIKA/configure" | head -n 1)
[ -n "$VERSION" ] || die "cannot read CORSIKA's version from $CORSIKA/configure"
say "CORSIKA $VERSION in $CORSIKA"
case $VERSION in
    77*) ;;
    *) say "WARNING: this recipe targets CORSIKA 7.7x; $VERSION is untested" ;;
esac

# A bundle's IACT/ATMO package (bernlohr-*.tar.gz beside CORSIKA) replaces CORSIKA's copy,
# as CTA's build_all does; a CORSIKA that ships its package only packed gets it unpacked.
unpack_iact() { # an IACT/ATMO tarball into bernlohr/, with or without a top directory
    rm -rf "$WORK/iact"
    mkdir "$WORK/iact"
    tar -xzf "$1" -C "$WORK/iact" || die "cannot unpack $1"
    top=$(find "$WORK/iact" -maxdepth 2 -type f -name iact.c | head -n 1)
    [ -n "$top" ] || die "$(basename "$1") holds no iact.c: not an IACT/ATMO package"
    cp -R "$(dirname "$top")/." "$CORSIKA/bernlohr/"
}
bundled=$(find "$WORK/src" -maxdepth 2 -type f -name 'bernlohr-*.tar.gz' ! -path "$CORSIKA/*" |
    sort | tail -n 1)
packed=$(find "$CORSIKA/bernlohr" -maxdepth 1 -type f -name 'bernlohr-*.tar.gz' | sort | tail -n 1)
if [ -n "$bundled" ]; then
    say "using the bundle's IACT/ATMO package $(basename "$bundled")"
    unpack_iact "$bundled"
elif [ ! -f "$CORSIKA/bernlohr/iact.c" ] && [ -n "$packed" ]; then
    unpack_iact "$packed"
fi
[ -f "$CORSIKA/bernlohr/iact.c" ] || die "the IACT/ATMO package (bernlohr/iact.c) is missing"
# sim_telarray's configuration (in a bundle) holds the CTA atmospheric profiles.
find "$WORK/src" -maxdepth 2 -type f -name 'sim_telarray*.tar.gz' | while read -r simtel; do
    tar -xzf "$simtel" -C "$WORK/src" --wildcards '*atmprof*.dat' 2>/dev/null || true
done

# ---- FLUKA, when asked for ----------------------------------------------------------------
FLUKA_OPTION=
if [ "$CORLEMODEL" = FLUKA ]; then
    flupro=${FLUPRO:-}
    if [ -z "$flupro" ]; then
        lib=$(find "$WORK/src" -type f -name libflukahp.a | head -n 1)
        if [ -n "$lib" ]; then flupro=$(dirname "$lib"); fi
    fi
    if [ -z "$flupro" ] || [ ! -f "$flupro/libflukahp.a" ] || [ ! -d "$flupro/flukapro" ]; then
        die "le_model fluka needs FLUKA, which is licensed and downloaded separately from
    CORSIKA (fluka.cern / fluka.org): put a built FLUKA 2011.2x directory (with flukapro/
    and libflukahp.a) into the CORSIKA tarball, or choose le_model urqmd or gheisha"
    fi
    say "FLUKA from $flupro, installed to $FLUKA_PREFIX"
    mkdir -p "$FLUKA_PREFIX"
    cp -R "$flupro/." "$FLUKA_PREFIX/"
    FLUPRO=$FLUKA_PREFIX
    export FLUPRO
    FLUKA_OPTION=--with-fluka
fi

# ---- compilers --------------------------------------------------------------------------
for tool in gfortran gcc g++ make cpp; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (the recipe installs gfortran,
    gcc, g++ and make)"
done
say "$(gfortran --version | head -n 1)"
# gfortran >= 10 rejects the argument mismatches of CORSIKA's older Fortran (UrQMD, EPOS,
# GHEISHA) unless told to accept them; GCC >= 10 likewise needs -fcommon for old C.
FFLAGS="-g -O2"
CFLAGS="-g -O2"
if echo "      end" >"$WORK/probe.f" &&
    gfortran -fallow-argument-mismatch -c "$WORK/probe.f" -o "$WORK/probe.o" 2>/dev/null; then
    FFLAGS="$FFLAGS -fallow-argument-mismatch"
    CFLAGS="$CFLAGS -fcommon"
fi

# ---- configure, build, install ----------------------------------------------------------
cd "$CORSIKA"
OPTIONS="--with-bernlohr --enable-CERENKOV --enable-IACT --enable-VIEWCONE --enable-ATMEXT"
say "configure: CORHEMODEL=$CORHEMODEL CORLEMODEL=$CORLEMODEL CORDETECTOR=VOLUMEDET $OPTIONS"
# shellcheck disable=SC2086 # the option lists are meant to split into words
./configure CORHEMODEL="$CORHEMODEL" CORLEMODEL="$CORLEMODEL" CORDETECTOR=VOLUMEDET \
    CORTIMELIB=TIMEAUTO $OPTIONS $FLUKA_OPTION \
    --prefix="$CORSIKA" --bindir="$CORSIKA/run" --libdir="$CORSIKA/lib/unknown" \
    F77=gfortran FFLAGS="$FFLAGS" CFLAGS="$CFLAGS" </dev/null >"$WORK/configure.log" 2>&1 || {
    show_log "$WORK/configure.log"
    [ -f config.log ] && show_log config.log 40
    die "CORSIKA's configure failed"
}
say "compiling (several minutes)"
make </dev/null >"$WORK/make.log" 2>&1 || {
    show_log "$WORK/make.log" 80
    die "compiling CORSIKA failed"
}
make install </dev/null >>"$WORK/make.log" 2>&1 || {
    show_log "$WORK/make.log" 40
    die "installing CORSIKA into its run/ directory failed"
}

binaries=$(find run -maxdepth 1 -type f -name 'corsika*Linux*' -perm -u+x)
count=$(printf '%s\n' "$binaries" | grep -c . || true)
[ "$count" -eq 1 ] || die "expected one CORSIKA executable in run/, found $count:
$(ls -l run)"
say "built $binaries"

mkdir -p "$PREFIX/bin" "$PREFIX/data"
cp "$binaries" "$PREFIX/bin/corsika"
chmod 755 "$PREFIX/bin/corsika"
# Everything else in run/ is input data (DATDIR); links to bernlohr/ are copied as files.
for file in run/*; do
    [ "$file" = "$binaries" ] && continue
    [ -f "$file" ] || continue
    cp -L "$file" "$PREFIX/data/" || die "cannot copy $file"
done
# Atmospheric profiles from anywhere in the source (IACT/ATMO package, sim_telarray).
find "$WORK/src" -type f -name 'atmprof*.dat' | while read -r profile; do
    [ -e "$PREFIX/data/$(basename "$profile")" ] || cp "$profile" "$PREFIX/data/"
done
for profile in $REQUIRED_PROFILES; do
    [ -f "$PREFIX/data/$profile" ] || die "$profile (a CTA site atmosphere) is not in the
    source; CTA's corsika7.7_simtelarray bundle has it (sim_telarray/cfg/CTA), or add it to
    the CORSIKA tarball"
done
# Tables every run reads, and the ones of the chosen high-energy model.
ls "$PREFIX/data"/EGSDAT6_* >/dev/null 2>&1 || die "EGS4 tables (EGSDAT6_*) missing in run/"
[ -f "$PREFIX/data/NUCNUCCS" ] || die "NUCNUCCS missing in run/"
case $CORHEMODEL in
    QGSJETII) [ -f "$PREFIX/data/QGSDAT-II-04" ] || die "QGSDAT-II-04 missing in run/" ;;
    EPOS) ls "$PREFIX/data"/epos.* >/dev/null 2>&1 || die "EPOS tables (epos.*) missing in run/" ;;
esac

cat >"$PREFIX/BUILD-INFO" <<EOF
CORSIKA $VERSION ($(basename "$binaries"))
high-energy model: $HE_MODEL ($CORHEMODEL)
low-energy model: $LE_MODEL ($CORLEMODEL)
configure: CORDETECTOR=VOLUMEDET CORTIMELIB=TIMEAUTO $OPTIONS $FLUKA_OPTION
FFLAGS=$FFLAGS CFLAGS=$CFLAGS
compiler: $(gfortran --version | head -n 1)
EOF

# ---- smoke test: one small gamma shower seen by one telescope -----------------------------
say "smoke test"
mkdir "$WORK/smoke"
cd "$WORK/smoke"
ln -s "$PREFIX/data/atmprof26.dat" atmprof26.dat
cat >smoke.input <<EOF
RUNNR 1
EVTNR 1
NSHOW 1
PRMPAR 1
ESLOPE -2.0
ERANGE 50. 50.
THETAP 20. 20.
PHIP 180. 180.
VIEWCONE 0. 0.
SEED 1 0 0
SEED 2 0 0
SEED 3 0 0
SEED 4 0 0
OBSLEV 214700.
ATMOSPHERE 26 Y
MAGNET 20.552 -9.367
CSCAT 1 10000. 0.
TELESCOPE 0. 0. 2400. 1250.
CERSIZ 5.
CWAVLG 240. 1000.
DATDIR $PREFIX/data/
DIRECT ./
PAROUT F F
TELFIL smoke.corsika
EXIT
EOF
"$PREFIX/bin/corsika" <smoke.input >smoke.log 2>&1 || {
    show_log smoke.log
    die "the smoke test shower failed"
}
grep -q "END OF RUN" smoke.log || {
    show_log smoke.log
    die "the smoke test shower did not reach END OF RUN"
}
[ -s smoke.corsika ] || die "the smoke test wrote no photon file"
cd /

rm -f "$SOURCE"
say "done: $PREFIX/bin/corsika ($HE_MODEL + $LE_MODEL); build tree and source removed"
