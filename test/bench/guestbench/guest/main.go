// Command guest is the guest side of the real-guest benchmark: it mounts
// one virtio-fs share per tag, runs each file workload on every share in
// turn (the order rotating from workload to workload), and prints each
// run's duration as "GUEST RESULT bench-<workload>@<tag> PASS <seconds>
// <ops>", then "GUEST DONE". Page, dentry and inode caches are dropped
// before every run, so each starts cold and no run inherits another's
// warm caches. It runs inside a TCG guest built by test/lib/vm.
package main

import (
	"bytes"
	"crypto/sha256"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	tagList := flag.String("tags", "myfs", "comma-separated virtio-fs tags, each mounted at /mnt/<tag>")
	small := flag.Int("small-files", 2000, "files for the create/stat/readdir/unlink workloads")
	mid := flag.Int("mid-files", 500, "16 KiB files written and read back")
	seqMiB := flag.Int("seq-mib", 256, "MiB written and read sequentially")
	randOps := flag.Int("rand-ops", 4000, "4 KiB O_DIRECT random reads")
	flag.Parse()
	tags := strings.Split(*tagList, ",")
	var dirs []string
	for _, tag := range tags {
		dir, err := mountShare(tag)
		if err != nil {
			fail("mount@"+tag, err)
			fmt.Println("GUEST DONE")
			return
		}
		dirs = append(dirs, dir)
	}
	// The host picks which share goes first (guestbench.first= on the
	// kernel command line), so that it can alternate between boots.
	step := cmdlineInt("guestbench.first")
	each := func(name string, ops int, f func(dir string) error) {
		for k := range dirs {
			j := (k + step) % len(dirs)
			dropCaches()
			run(name+"@"+tags[j], ops, func() error { return f(dirs[j]) })
		}
		step++
	}
	each("small-create", *small, func(d string) error { return smallCreate(d, *small) })
	each("small-stat", *small, func(d string) error { return smallStat(d, *small) })
	each("small-readdir", 1, func(d string) error { return smallReaddir(d, *small) })
	each("small-unlink", *small, func(d string) error { return smallUnlink(d, *small) })
	each("mid-write", *mid, func(d string) error { return midWrite(d, *mid) })
	each("mid-read", *mid, func(d string) error { return midRead(d, *mid) })
	each("seq-write", *seqMiB, func(d string) error { return seqWrite(d, *seqMiB) })
	each("seq-read", *seqMiB, func(d string) error { return seqRead(d, *seqMiB) })
	each("rand-read-4k", *randOps, func(d string) error { return randRead(d, *seqMiB, *randOps) })
	for k, dir := range dirs {
		os.RemoveAll(dir)
		if err := unix.Unmount(filepath.Dir(dir), 0); err != nil {
			fail("unmount@"+tags[k], err)
		}
	}
	fmt.Println("GUEST DONE")
}

// mountShare mounts the share tagged tag at /mnt/<tag> and returns an
// empty folder on it to work in.
func mountShare(tag string) (string, error) {
	mnt := "/mnt/" + tag
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return "", err
	}
	if err := unix.Mount(tag, mnt, "virtiofs", 0, ""); err != nil {
		return "", err
	}
	dir := filepath.Join(mnt, "bench")
	os.RemoveAll(dir)
	return dir, os.MkdirAll(dir, 0o755)
}

// cmdlineInt returns the value of key=N on the kernel command line, or 0.
func cmdlineInt(key string) int {
	b, _ := os.ReadFile("/proc/cmdline")
	for _, f := range strings.Fields(string(b)) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
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

// dropCaches writes back and drops the guest's caches. The inodes it
// evicts are forgotten: the kernel then sends a FORGET for each to the
// daemon that served it, in the background. Those are left a moment to go
// out, so that a run does not pay for forgetting the previous run's inodes,
// nor for another daemon's.
func dropCaches() {
	unix.Sync()
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
	time.Sleep(500 * time.Millisecond)
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
