#!/bin/sh
# The NEON kernel table (simd/kernels_neon.c) on any host: cross-compiles
# tests/test_kernels.c with the simd/ sources for aarch64 (statically, so
# qemu-aarch64 needs no sysroot), runs it under qemu-user, where it checks
# every table the emulated CPU offers (scalar, neon) against the scalar
# reference, and checks the DSINFER_ISA rules there: neon is the best level,
# scalar may be forced, x86 levels are refused with a note.  Skips (77)
# without aarch64-linux-gnu-gcc and qemu-aarch64 (Debian: gcc-aarch64-linux-gnu,
# qemu-user); AARCH64_CC and QEMU_AARCH64 override the commands.
set -u
: "${top_srcdir:=.}"
CC=${AARCH64_CC:-aarch64-linux-gnu-gcc}
QEMU=${QEMU_AARCH64:-qemu-aarch64}
if ! command -v "$CC" >/dev/null 2>&1 || ! command -v "$QEMU" >/dev/null 2>&1; then
    echo "SKIP: needs $CC and $QEMU"
    exit 77
fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
ok() { echo "PASS $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }

S="$top_srcdir/simd"
# The warnings of the project's own build (configure.ac WARN_CFLAGS, with
# unused parameters too) as errors; no configure-generated header: simd/
# needs none.
if "$CC" -std=gnu11 -O2 -fopenmp -Wall -Wextra -Wshadow -Werror -static \
    -I"$S" -o "$T/test_kernels" "$top_srcdir/tests/test_kernels.c" "$S/cpu.c" "$S/dtype.c" "$S/quant.c" \
    "$S/kernels_scalar.c" "$S/kernels_avx2.c" "$S/kernels_avx512.c" "$S/kernels_avx512bf16.c" "$S/kernels_neon.c" \
    "$S/kernels_dispatch.c" -lm >"$T/cc.log" 2>&1; then
    ok "cross-compile for aarch64"
else
    bad "cross-compile for aarch64:"
    cat "$T/cc.log"
    exit 1
fi

# run ISA ARGS...: the emulated test_kernels with DSINFER_ISA=ISA ("" unsets it).
run() {
    isa=$1
    shift
    if [ -n "$isa" ]; then
        DSINFER_ISA=$isa "$QEMU" "$T/test_kernels" "$@" >"$T/out" 2>&1
    else
        (unset DSINFER_ISA; "$QEMU" "$T/test_kernels" "$@") >"$T/out" 2>&1
    fi
}

# Every table against the scalar reference, with neon selected.
if run neon && grep -q "selected neon" "$T/out" && grep -q "neon(ok)" "$T/out" && grep -q "scalar(ok)" "$T/out"
then ok "neon table matches scalar: $(tail -n 1 "$T/out")"; else bad "neon table:"; cat "$T/out"; fi

# Selection rules: best level, a forced lower one, refused x86 levels.
if run "" --selection && grep -q "neon=1; selected neon$" "$T/out"; then ok "default level is neon"
else bad "default level:"; cat "$T/out"; fi
if run scalar --selection && grep -q "selected scalar$" "$T/out"; then ok "DSINFER_ISA=scalar honoured"
else bad "DSINFER_ISA=scalar:"; cat "$T/out"; fi
for isa in avx2 avx512; do
    if run $isa --selection && grep -q "avx2=0 avx512=0" "$T/out" &&
        grep -q "selected neon — DSINFER_ISA=$isa is not supported by this CPU; using neon" "$T/out"
    then ok "DSINFER_ISA=$isa refused, neon used"; else bad "DSINFER_ISA=$isa:"; cat "$T/out"; fi
done
if run bogus --selection && grep -q "DSINFER_ISA=bogus is not a known level; using neon" "$T/out"
then ok "DSINFER_ISA=bogus refused"; else bad "DSINFER_ISA=bogus:"; cat "$T/out"; fi

echo "$fails failure(s)"
[ "$fails" = 0 ]
