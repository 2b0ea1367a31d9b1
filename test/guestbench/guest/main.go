// Command guest is the guest side of the real-guest benchmark: it runs
// file workloads on a mounted virtio-fs share and prints each one's
// duration as "GUEST RESULT bench-<name> PASS <seconds> <ops>", then
// "GUEST DONE". It runs inside a TCG guest built by test/vm.
package main

import (
	"bytes"
	"crypto/sha256"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	dir := flag.String("dir", "/mnt/bench", "directory on the share to work in")
	small := flag.Int("small-files", 2000, "files for the create/stat/readdir/unlink workloads")
	mid := flag.Int("mid-files", 500, "16 KiB files written and read back")
	seqMiB := flag.Int("seq-mib", 256, "MiB written and read sequentially")
	randOps := flag.Int("rand-ops", 4000, "4 KiB O_DIRECT random reads")
	flag.Parse()
	os.RemoveAll(*dir)
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		fail("setup", err)
		return
	}
	run("small-create", *small, func() error { return smallCreate(*dir, *small) })
	dropCaches()
	run("small-stat", *small, func() error { return smallStat(*dir, *small) })
	run("small-readdir", 1, func() error { return smallReaddir(*dir, *small) })
	run("small-unlink", *small, func() error { return smallUnlink(*dir, *small) })
	run("mid-write", *mid, func() error { return midWrite(*dir, *mid) })
	dropCaches()
	run("mid-read", *mid, func() error { return midRead(*dir, *mid) })
	run("seq-write", *seqMiB, func() error { return seqWrite(*dir, *seqMiB) })
	dropCaches()
	run("seq-read", *seqMiB, func() error { return seqRead(*dir, *seqMiB) })
	run("rand-read-4k", *randOps, func() error { return randRead(*dir, *seqMiB, *randOps) })
	os.RemoveAll(*dir)
	fmt.Println("GUEST DONE")
}

func fail(name string, err error) {
	fmt.Printf("GUEST RESULT bench-%s FAIL %v\n", name, err)
}

func run(name string, ops int, f func() error) {
	start := time.Now()
	if err := f(); err != nil {
		fail(name, err)
		return
	}
	fmt.Printf("GUEST RESULT bench-%s PASS %.6f %d\n", name, time.Since(start).Seconds(), ops)
}

func dropCaches() {
	unix.Sync()
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
}

func smallName(dir string, i int) string { return filepath.Join(dir, "small", fmt.Sprintf("f%05d", i)) }

func smallCreate(dir string, n int) error {
	if err := os.Mkdir(filepath.Join(dir, "small"), 0o755); err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		f, err := os.OpenFile(smallName(dir, i), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		f.Close()
	}
	return nil
}

func smallStat(dir string, n int) error {
	var st unix.Stat_t
	for i := 0; i < n; i++ {
		if err := unix.Stat(smallName(dir, i), &st); err != nil {
			return err
		}
	}
	return nil
}

func smallReaddir(dir string, n int) error {
	ents, err := os.ReadDir(filepath.Join(dir, "small"))
	if err != nil {
		return err
	}
	if len(ents) != n {
		return fmt.Errorf("readdir found %d entries, want %d", len(ents), n)
	}
	return nil
}

func smallUnlink(dir string, n int) error {
	for i := 0; i < n; i++ {
		if err := os.Remove(smallName(dir, i)); err != nil {
			return err
		}
	}
	return os.Remove(filepath.Join(dir, "small"))
}

func content(i, size int) []byte {
	b := make([]byte, size)
	r := rand.New(rand.NewPCG(uint64(i), 42))
	for j := range b {
		b[j] = byte(r.Uint32())
	}
	return b
}

func midName(dir string, i int) string { return filepath.Join(dir, fmt.Sprintf("m%04d", i)) }

func midWrite(dir string, n int) error {
	for i := 0; i < n; i++ {
		if err := os.WriteFile(midName(dir, i), content(i, 16<<10), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func midRead(dir string, n int) error {
	for i := 0; i < n; i++ {
		b, err := os.ReadFile(midName(dir, i))
		if err != nil {
			return err
		}
		if sha256.Sum256(b) != sha256.Sum256(content(i, 16<<10)) {
			return fmt.Errorf("%s: content differs", midName(dir, i))
		}
	}
	return nil
}

func seqWrite(dir string, mib int) error {
	f, err := os.Create(filepath.Join(dir, "seq"))
	if err != nil {
		return err
	}
	defer f.Close()
	buf := bytes.Repeat([]byte{0xa5}, 1<<20)
	for i := 0; i < mib; i++ {
		if _, err := f.Write(buf); err != nil {
			return err
		}
	}
	return f.Sync()
}

func seqRead(dir string, mib int) error {
	f, err := os.Open(filepath.Join(dir, "seq"))
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	total := 0
	for {
		n, err := f.Read(buf)
		total += n
		if n == 0 || err != nil {
			break
		}
	}
	if total != mib<<20 {
		return fmt.Errorf("read %d bytes, want %d", total, mib<<20)
	}
	return nil
}

func randRead(dir string, mib, ops int) error {
	fd, err := unix.Open(filepath.Join(dir, "seq"), unix.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	mem, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	defer unix.Munmap(mem)
	r := rand.New(rand.NewPCG(7, 7))
	blocks := int64(mib) << 20 / 4096
	for i := 0; i < ops; i++ {
		off := r.Int64N(blocks) * 4096
		n, err := unix.Pread(fd, mem, off)
		if err != nil {
			return err
		}
		if n != 4096 || mem[0] != 0xa5 {
			return fmt.Errorf("pread at %d: %d bytes, first %#x", off, n, mem[0])
		}
	}
	return nil
}
