package guestspec

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestPatternIsAFunctionOfOffset(t *testing.T) {
	seed := SeedOf("x")
	whole := Pattern(seed, 1000, 4096)
	for _, c := range []struct{ off, n int }{{0, 1}, {1, 7}, {3, 13}, {8, 8}, {4000, 96}, {1234, 999}} {
		got := Pattern(seed, 1000+int64(c.off), c.n)
		if !bytes.Equal(got, whole[c.off:c.off+c.n]) {
			t.Errorf("pattern at +%d len %d differs from the same range of a larger fill", c.off, c.n)
		}
	}
	if bytes.Equal(Pattern(SeedOf("a"), 0, 64), Pattern(SeedOf("b"), 0, 64)) {
		t.Error("different seeds give the same pattern")
	}
	if bytes.Equal(Pattern(seed, 0, 64), Pattern(seed, 64, 64)) {
		t.Error("pattern repeats after 64 bytes")
	}
	// Offsets beyond 4 GiB are distinct from their low 32 bits.
	if bytes.Equal(Pattern(seed, 8, 64), Pattern(seed, 8+(4<<30), 64)) {
		t.Error("pattern at 4 GiB + 8 equals pattern at 8")
	}
}

func TestExpectedSparse(t *testing.T) {
	e := sparse("s", 0o644, 100, Extent{10, 5}, Extent{50, 10})
	got := Expected(e, 0, 100)
	for i, b := range got {
		inData := (i >= 10 && i < 15) || (i >= 50 && i < 60)
		if !inData && b != 0 {
			t.Fatalf("byte %d in a hole is %#x", i, b)
		}
	}
	if !bytes.Equal(got[50:60], Pattern(e.Seed(), 50, 10)) {
		t.Error("data extent does not hold the pattern")
	}
}

func requireRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (chown)")
	}
}

func TestGuestFilesRoundTrip(t *testing.T) {
	requireRoot(t)
	share := t.TempDir()
	if err := WriteGuestFiles(HostCheckPath(share, "run1")); err != nil {
		t.Fatalf("WriteGuestFiles: %v", err)
	}
	if err := VerifyHost(share, "run1"); err != nil {
		t.Fatalf("VerifyHost: %v", err)
	}
	// Writing again replaces the tree.
	if err := WriteGuestFiles(HostCheckPath(share, "run1")); err != nil {
		t.Fatalf("WriteGuestFiles again: %v", err)
	}
	if err := VerifyHost(share, "run1"); err != nil {
		t.Fatalf("VerifyHost again: %v", err)
	}
	if err := VerifyHost(share, "other"); err == nil {
		t.Fatal("VerifyHost of a workdir the guest did not write succeeded")
	}
}

func TestPrepareHostRoundTrip(t *testing.T) {
	share := t.TempDir()
	if err := PrepareHost(share); err != nil {
		t.Fatalf("PrepareHost: %v", err)
	}
	if err := VerifyPrepared(filepath.Join(share, HostPreparedDir)); err != nil {
		t.Fatalf("VerifyPrepared: %v", err)
	}
	if err := PrepareHost(share); err != nil {
		t.Fatalf("PrepareHost again: %v", err)
	}
	if err := VerifyPrepared(filepath.Join(share, HostPreparedDir)); err != nil {
		t.Fatalf("VerifyPrepared again: %v", err)
	}
}

func TestVerifyDetectsChanges(t *testing.T) {
	requireRoot(t)
	must := func(t *testing.T, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name   string
		mutate func(t *testing.T, dir string)
		want   string
	}{
		{"flipped byte", func(t *testing.T, dir string) {
			f, err := os.OpenFile(filepath.Join(dir, "mib-plus-13"), os.O_WRONLY, 0)
			must(t, err)
			defer f.Close()
			b := Expected(GuestEntries()[3], 1<<20+5, 1)
			b[0] ^= 1
			_, err = f.WriteAt(b, 1<<20+5)
			must(t, err)
		}, "content differs at offset 1048581"},
		{"data in the hole", func(t *testing.T, dir string) {
			f, err := os.OpenFile(filepath.Join(dir, "sparse-8g"), os.O_WRONLY, 0)
			must(t, err)
			defer f.Close()
			_, err = f.WriteAt([]byte{1}, 4<<30)
			must(t, err)
		}, "content differs at offset 4294967296"},
		{"truncated", func(t *testing.T, dir string) {
			must(t, os.Truncate(filepath.Join(dir, "page-4k"), 4095))
		}, "page-4k: size 4095, want 4096"},
		{"mode", func(t *testing.T, dir string) {
			must(t, os.Chmod(filepath.Join(dir, "owned-0640"), 0o644))
		}, "owned-0640: permissions 0644, want 0640"},
		{"dir mode", func(t *testing.T, dir string) {
			must(t, os.Chmod(filepath.Join(dir, "tree/a/b/c"), 0o755))
		}, "tree/a/b/c: permissions 0755, want 0700"},
		{"owner", func(t *testing.T, dir string) {
			must(t, os.Chown(filepath.Join(dir, "owned-0640"), 1234, 0))
		}, "owned-0640: owner 1234:0, want 1234:5678"},
		{"mtime", func(t *testing.T, dir string) {
			ts := GuestMtime.Add(time.Nanosecond)
			must(t, os.Chtimes(filepath.Join(dir, "mtime-fixed"), ts, ts))
		}, "mtime-fixed: mtime 1234567890.123456790, want 1234567890.123456789"},
		{"symlink target", func(t *testing.T, dir string) {
			must(t, os.Remove(filepath.Join(dir, "symlink-rel")))
			must(t, os.Symlink("tree/a/file-b", filepath.Join(dir, "symlink-rel")))
		}, `symlink-rel: symlink target "tree/a/file-b", want "tree/a/file-a"`},
		{"broken hardlink", func(t *testing.T, dir string) {
			dst := filepath.Join(dir, "tree/hardlink-dst")
			data, err := os.ReadFile(dst)
			must(t, err)
			must(t, os.Remove(dst))
			must(t, os.WriteFile(dst, data, 0o644))
		}, "hardlink-src: nlink 1, want 2"},
		{"extra file", func(t *testing.T, dir string) {
			must(t, os.WriteFile(filepath.Join(dir, "tree/empty-dir/x"), nil, 0o644))
		}, "tree/empty-dir/x: unexpected entry"},
		{"missing file", func(t *testing.T, dir string) {
			must(t, os.Remove(filepath.Join(dir, "empty")))
		}, "empty: missing"},
		{"type", func(t *testing.T, dir string) {
			must(t, os.Remove(filepath.Join(dir, "one-byte")))
			must(t, os.Mkdir(filepath.Join(dir, "one-byte"), 0o644))
		}, "one-byte: type directory, want regular file"},
		{"not sparse", func(t *testing.T, dir string) {
			fd, err := unix.Open(filepath.Join(dir, "sparse-8g"), unix.O_WRONLY, 0)
			must(t, err)
			defer unix.Close(fd)
			// Allocated zeros read like the hole but use blocks.
			must(t, unix.Fallocate(fd, unix.FALLOC_FL_KEEP_SIZE, 1<<30, 4<<20))
		}, "sparse-8g: st_blocks"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "tree")
			must(t, WriteGuestFiles(dir))
			c.mutate(t, dir)
			err := VerifyGuestFiles(dir)
			if err == nil {
				t.Fatal("Verify found no difference")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Verify error does not mention %q:\n%v", c.want, err)
			}
		})
	}
}

func TestResultLines(t *testing.T) {
	r := Result{Name: "some check", Status: Fail, Detail: "line one\nline two\x01"}
	line := r.String()
	if want := "GUEST RESULT some_check FAIL line one line two?"; line != want {
		t.Fatalf("got %q, want %q", line, want)
	}
	if got := (Result{Name: "x", Status: Pass}).String(); got != "GUEST RESULT x PASS -" {
		t.Fatalf("empty detail: got %q", got)
	}
	out := "noise\r\n[    1.0] kernel: GUEST RESULT a PASS ok 3ms\r\nGUEST RESULT b SKIP why not\nGUEST RESULT c MAYBE x\nGUEST DONE\r\n"
	results, done := ParseOutput(out)
	if !done {
		t.Error("done line not seen")
	}
	want := []Result{{"a", Pass, "ok 3ms"}, {"b", Skip, "why not"}}
	if len(results) != len(want) {
		t.Fatalf("got %v, want %v", results, want)
	}
	for i := range want {
		if results[i] != want[i] {
			t.Errorf("result %d: got %+v, want %+v", i, results[i], want[i])
		}
	}
}

// TestSoakFiles pins the soak's files: the guest writes them and the host
// regenerates them, from these functions alone.
func TestSoakFiles(t *testing.T) {
	if SoakSize(0, 0) != 1 || SoakSize(3, 1) != SoakMaxSize {
		t.Fatalf("first sizes %d, %d; want 1, %d", SoakSize(0, 0), SoakSize(3, 1), SoakMaxSize)
	}
	names := map[string]bool{}
	for w := 0; w < SoakWriters; w++ {
		for i := 0; i < SoakFiles; i++ {
			n := SoakSize(w, i)
			if n < 1 || n > SoakMaxSize {
				t.Fatalf("file %d of writer %d has %d bytes", i, w, n)
			}
			if c := SoakContent(w, i); len(c) != n || !bytes.Equal(c, SoakContent(w, i)) {
				t.Fatalf("file %d of writer %d: content of %d bytes, not %d, or not the same twice", i, w, len(c), n)
			}
			if names[SoakName(w, i)] {
				t.Fatalf("two files named %s", SoakName(w, i))
			}
			names[SoakName(w, i)] = true
		}
	}
	if bytes.Equal(SoakContent(0, 5)[:1], SoakContent(1, 5)[:1]) && bytes.Equal(SoakContent(0, 5), SoakContent(1, 5)) {
		t.Error("two writers' files alike")
	}
}
