// Package benchstat holds the few statistics the benchmarks report: the
// median of a workload's rounds and the geometric mean of its ratios. It
// is shared by vhostfs-bench and the guest benchmarks under test/bench, so
// that a figure means the same thing in each of their reports.
package benchstat

import (
	"math"
	"slices"
)

// Median is the median of xs: the middle value, or the mean of the middle
// two for an even count; 0 when xs is empty. xs is not changed.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Geomean is the geometric mean of the positive, finite xs (the others
// are left out: a failed round's 0 or a ratio's Inf); 0 when there are
// none.
func Geomean(xs []float64) float64 {
	var sum float64
	n := 0
	for _, x := range xs {
		if x > 0 && !math.IsInf(x, 0) && !math.IsNaN(x) {
			sum += math.Log(x)
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return math.Exp(sum / float64(n))
}
