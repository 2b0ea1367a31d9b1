// Package guestspec is shared by the program that runs inside the test VM
// (test/e2e/guest/share) and the host side of the VM tests.
//
// It defines the deterministic file content used on both sides, the tree of
// files the guest leaves in the share for the host to check
// (GuestEntries, written by WriteGuestFiles, checked by VerifyHost), the tree
// the host prepares in the share before boot for the guest to check
// (HostEntries, written by PrepareHost, checked by VerifyPrepared), and the
// format of the result lines the guest prints on its console.
package guestspec

// Pattern bytes are a pure function of a seed and the absolute file offset,
// so any range of a file, however large, can be produced or checked without
// producing the bytes before it.

// SeedOf turns a name into a pattern seed (64-bit FNV-1a).
func SeedOf(name string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(name); i++ {
		h ^= uint64(name[i])
		h *= 1099511628211
	}
	return h
}

// mix is the splitmix64 finaliser.
func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// FillPattern fills p with the pattern bytes of seed that live at file
// offsets off .. off+len(p)-1.
func FillPattern(p []byte, seed uint64, off int64) {
	i := 0
	for i < len(p) {
		pos := off + int64(i)
		word := mix(seed ^ uint64(pos>>3))
		for b := pos & 7; b < 8 && i < len(p); b++ {
			p[i] = byte(word >> (8 * b))
			i++
		}
	}
}

// Pattern returns the n pattern bytes of seed at file offset off.
func Pattern(seed uint64, off int64, n int) []byte {
	p := make([]byte, n)
	FillPattern(p, seed, off)
	return p
}

// NamedPattern is Pattern(SeedOf(name), off, n).
func NamedPattern(name string, off int64, n int) []byte {
	return Pattern(SeedOf(name), off, n)
}

// FirstDiff returns the index of the first byte where got and want differ,
// or -1 if they are equal (a length difference counts at the shorter length).
func FirstDiff(got, want []byte) int {
	n := min(len(got), len(want))
	for i := 0; i < n; i++ {
		if got[i] != want[i] {
			return i
		}
	}
	if len(got) != len(want) {
		return n
	}
	return -1
}
