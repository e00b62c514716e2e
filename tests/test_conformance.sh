#!/bin/sh
# Forward pass against DeepSeek's reference outputs for every case in tests/data
# (see tests/conformance.py for what is compared).
set -e
: "${top_srcdir:=.}" "${top_builddir:=.}"
status=0
found=0
for case in "$top_srcdir"/tests/data/*/; do
    [ -d "$case/ref_fp32" ] || continue
    found=1
    python3 "$top_srcdir/tests/conformance.py" "$top_builddir/tools/dsinfer-eval" "$case" || status=1
done
[ "$found" = 1 ] || { echo "no conformance cases in $top_srcdir/tests/data"; exit 1; }
exit $status
