# awk -f tools/ab/report.awk -v base=LABEL OUT
# Per cell and label: median CPU ns, min-max, IQR as % of the median; and the
# median over rounds of (label / base) in the same round (paired ratio).
function sortn(a, n,   i, j, t) { for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t } }
function q(a, n, p,   x, i) { x = 1 + (n - 1) * p; i = int(x); return (i >= n) ? a[n] : a[i] + (x - i) * (a[i + 1] - a[i]) }
{ v[$1, $2, $3] = $4; if (!(($1, $2) in seen)) { seen[$1, $2] = 1; lab[$1] = lab[$1] " " $2 }; if (!($1 in cs)) { cs[$1] = 1; cells[++nc] = $1 }; if ($3 > maxr) maxr = $3 }
END {
    printf "%-9s %-14s %7s %15s %6s %8s %8s\n", "cell", "label", "median", "min-max", "IQR%", "x" base, "ratioIQR"
    for (c = 1; c <= nc; c++) {
        cell = cells[c]; m = split(lab[cell], L, " ")
        for (j = 1; j <= m; j++) {
            n = 0; nr = 0
            for (r = 1; r <= maxr; r++) if ((cell, L[j], r) in v) {
                a[++n] = v[cell, L[j], r]
                if ((cell, base, r) in v) rt[++nr] = v[cell, L[j], r] / v[cell, base, r]
            }
            sortn(a, n); sortn(rt, nr)
            med = q(a, n, .5)
            printf "%-9s %-14s %7.2f %7.2f-%-7.2f %5.1f%% %8.3f %8.3f\n", cell, L[j], med, a[1], a[n], 100 * (q(a, n, .75) - q(a, n, .25)) / med, nr ? q(rt, nr, .5) : 0, nr ? q(rt, nr, .75) - q(rt, nr, .25) : 0
        }
    }
}
