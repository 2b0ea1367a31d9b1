package guestspec

import "fmt"

// The files of the faults suite's soak: guest/faults writes them, the host
// test regenerates them from the same functions and compares.
const (
	// SoakWriters is how many writers the soak runs, SoakFiles how many
	// files each writes, SoakMaxSize the largest file.
	SoakWriters = 8
	SoakFiles   = 200
	SoakMaxSize = 256 << 10
)

// Splitmix is the splitmix64 generator: it advances *s and returns the
// next value.
func Splitmix(s *uint64) uint64 {
	*s += 0x9e3779b97f4a7c15
	z := *s
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

func soakSeed(w, i int) uint64 { return uint64(w)<<32 | uint64(i) + 0x736f616b }

// SoakSize is the size of file i of writer w: 1 B and 256 KiB for the
// first two, then for a third of them uniform up to 256 KiB, for the rest
// uniform up to a power of two picked at random (small files abound).
func SoakSize(w, i int) int {
	switch i {
	case 0:
		return 1
	case 1:
		return SoakMaxSize
	}
	s := soakSeed(w, i) ^ 0x5157
	if Splitmix(&s)%3 == 0 {
		return 1 + int(Splitmix(&s)%SoakMaxSize)
	}
	bits := Splitmix(&s) % 19 // 2^18 = 256 KiB
	return 1 + int(Splitmix(&s)%(1<<bits))
}

// SoakContent is the content of file i of writer w.
func SoakContent(w, i int) []byte {
	n := SoakSize(w, i)
	b := make([]byte, n+7)
	s := soakSeed(w, i)
	for j := 0; j < n; j += 8 {
		v := Splitmix(&s)
		for k := 0; k < 8; k++ {
			b[j+k] = byte(v >> (8 * k))
		}
	}
	return b[:n]
}

// SoakName is where file i of writer w ends up: every third file is
// renamed into the shared "renamed" directory.
func SoakName(w, i int) string {
	if i%3 == 0 {
		return fmt.Sprintf("renamed/w%d-r%03d", w, i)
	}
	return fmt.Sprintf("w%d/f%03d", w, i)
}
