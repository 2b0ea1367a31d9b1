package benchstat

import (
	"fmt"
	"math"
	"testing"
)

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		xs   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{5}, 5},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		in := fmt.Sprint(tc.xs)
		if got := Median(tc.xs); got != tc.want {
			t.Errorf("Median(%v) = %v, want %v", tc.xs, got, tc.want)
		}
		if fmt.Sprint(tc.xs) != in {
			t.Errorf("Median sorted its argument: %v, was %s", tc.xs, in)
		}
	}
}

func TestGeomean(t *testing.T) {
	if g := Geomean([]float64{1, 4, 16}); math.Abs(g-4) > 1e-9 {
		t.Errorf("Geomean(1, 4, 16) = %v, want 4", g)
	}
	if g := Geomean([]float64{2, 0, math.Inf(1), math.NaN(), 8}); math.Abs(g-4) > 1e-9 {
		t.Errorf("Geomean leaving out 0, Inf and NaN = %v, want 4", g)
	}
	if g := Geomean(nil); g != 0 {
		t.Errorf("Geomean() = %v, want 0", g)
	}
}

// ExampleMedian shows a benchmark's figure for three rounds.
func ExampleMedian() {
	fmt.Println(Median([]float64{410e3, 395e3, 402e3}))
	// Output: 402000
}
