#!/bin/sh
# A program to sweep: the logistic map x <- r x (1 - x), iterated from x0.
#
#   logistic.sh R X0 [STEPS]
#
# Prints one JSON object: the growth rate, the last value, the number of distinct
# values the orbit settles on (1: a fixed point, 2, 4...: a cycle, many: chaos) and
# its Lyapunov exponent (> 0: chaotic). Invalid input: a line on stderr, exit 2.
set -eu
if [ $# -lt 2 ]; then
    echo "usage: logistic.sh R X0 [STEPS]" >&2
    exit 2
fi
exec awk -v r="$1" -v x="$2" -v steps="${3:-2000}" 'BEGIN {
    if (r !~ /^[0-9]+(\.[0-9]+)?$/ || r + 0 > 4) { print "r must be a number from 0 to 4, got " r > "/dev/stderr"; exit 2 }
    if (x !~ /^0?\.[0-9]+$/ || x + 0 <= 0 || x + 0 >= 1) { print "x0 must be between 0 and 1, got " x > "/dev/stderr"; exit 2 }
    r += 0; x += 0; lyap = 0; n = 0
    for (i = 0; i < steps; i++) {
        x = r * x * (1 - x)
        d = r * (1 - 2 * x); if (d < 0) d = -d
        if (i >= steps / 2) {
            lyap += (d > 1e-12) ? log(d) : log(1e-12)
            key = sprintf("%.6f", x); if (!(key in seen)) { seen[key] = 1; n++ }
        }
    }
    printf "{\"r\": %s, \"x_end\": %.8f, \"cycle\": %d, \"lyapunov\": %.6f}\n", r, x, n, lyap / (steps - steps / 2)
}'
