package frontend_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"

	"github.com/govirtiofsd/govirtiofsd/harness/frontend"
	"github.com/govirtiofsd/govirtiofsd/harness/fuseclient"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// idSession is one daemon started with id translation options, with a
// client whose requests come from one guest caller.
type idSession struct {
	t     *testing.T
	c     *fuseclient.Client
	share string
	log   []string
}

func startIDSession(t *testing.T, d daemon.Daemon, extra []string, uid, gid uint32) *idSession {
	t.Helper()
	share := t.TempDir()
	// Callers other than root create here.
	if err := os.Chmod(share, 0o777); err != nil {
		t.Fatal(err)
	}
	fe, err := frontend.Start(d, daemon.Options{SharedDir: share, Extra: extra}, frontend.Options{})
	if err != nil {
		t.Fatalf("starting %s %q: %v", d.Name, extra, err)
	}
	c := fuseclient.New(fe, fuseclient.Options{Caller: fuse.Caller{Owner: fuse.Owner{Uid: uid, Gid: gid}, Pid: 1}})
	t.Cleanup(func() {
		c.Close()
		if err := fe.Close(); err != nil {
			t.Errorf("closing the front-end of %s: %v", d.Name, err)
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", d.Name, fe.Proc().Stderr())
		}
	})
	if _, err := c.Init(); err != nil {
		t.Fatalf("INIT: %v", err)
	}
	return &idSession{t: t, c: c, share: share}
}

// outcome is "ok" or the errno a request failed with; anything else (a
// protocol error) fails the test.
func (s *idSession) outcome(err error) string {
	var e syscall.Errno
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &e):
		return e.Error()
	}
	s.t.Fatalf("request failed: %v", err)
	return ""
}

func (s *idSession) hostOwner(n string) string {
	var st syscall.Stat_t
	if err := syscall.Lstat(filepath.Join(s.share, n), &st); err != nil {
		return "absent"
	}
	return fmt.Sprintf("%d:%d", st.Uid, st.Gid)
}

func (s *idSession) logf(format string, a ...any) { s.log = append(s.log, fmt.Sprintf(format, a...)) }

// create makes a file and a directory as the caller.
func (s *idSession) create(n string) {
	e, o, err := s.c.Create(1, n, syscall.O_RDWR, 0o644)
	s.logf("create %s: %s host %s reply %d:%d", n, s.outcome(err), s.hostOwner(n), e.Attr.Uid, e.Attr.Gid)
	if err == nil {
		s.c.Release(e.NodeId, o.Fh, syscall.O_RDWR)
	}
	d, err := s.c.Mkdir(1, n+".d", 0o755)
	s.logf("mkdir %s.d: %s host %s reply %d:%d", n, s.outcome(err), s.hostOwner(n+".d"), d.Attr.Uid, d.Attr.Gid)
}

// hostFile makes a file owned by uid:gid on the host and reports the owner
// LOOKUP and GETATTR give the guest.
func (s *idSession) hostFile(n string, uid, gid int) uint64 {
	p := filepath.Join(s.share, n)
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		s.t.Fatal(err)
	}
	if err := os.Lchown(p, uid, gid); err != nil {
		s.t.Fatal(err)
	}
	e, err := s.c.Lookup(1, n)
	a, err2 := s.c.GetAttr(e.NodeId)
	s.logf("host %d:%d: lookup %s %d:%d getattr %s %d:%d", uid, gid, s.outcome(err), e.Attr.Uid, e.Attr.Gid, s.outcome(err2), a.Attr.Uid, a.Attr.Gid)
	return e.NodeId
}

// chown sets the owner fields valid selects to uid:gid.
func (s *idSession) chown(n string, node uint64, valid uint32, uid, gid uint32) {
	a, err := s.c.SetAttr(node, &fuse.SetAttrIn{SetAttrInCommon: fuse.SetAttrInCommon{Valid: valid, Owner: fuse.Owner{Uid: uid, Gid: gid}}})
	s.logf("chown %s %d:%d (valid %#x): %s host %s reply %d:%d", n, uid, gid, valid, s.outcome(err), s.hostOwner(n), a.Attr.Uid, a.Attr.Gid)
}

const (
	fuid  = fuse.FATTR_UID
	fgid  = fuse.FATTR_GID
	fboth = fuse.FATTR_UID | fuse.FATTR_GID
)

// idScenarios are command lines, a caller and what it does, with what
// virtiofsd 1.13.2 answers (recorded from it).
var idScenarios = []struct {
	name     string
	args     []string
	uid, gid uint32
	run      func(s *idSession)
	want     []string
}{
	{
		name: "map",
		args: []string{"--translate-uid", "map:1000:2000:10", "--translate-gid", "map:1000:3000:10"},
		uid:  1005, gid: 1006,
		run: func(s *idSession) {
			s.create("a")
			s.hostFile("mapped", 2003, 3004)
			s.hostFile("guestish", 1003, 1004)
			n := s.hostFile("other", 7, 8)
			s.chown("other", n, fboth, 1001, 1002)
			s.chown("other", n, fuid, 5, 9999)
			s.chown("other", n, fgid, 9999, 1009)
		},
		want: []string{
			"create a: ok host 2005:3006 reply 1005:1006",
			"mkdir a.d: ok host 2005:3006 reply 1005:1006",
			"host 2003:3004: lookup ok 1003:1004 getattr ok 1003:1004",
			"host 1003:1004: lookup ok 1003:1004 getattr ok 1003:1004",
			"host 7:8: lookup ok 7:8 getattr ok 7:8",
			"chown other 1001:1002 (valid 0x6): ok host 2001:3002 reply 1001:1002",
			"chown other 5:9999 (valid 0x2): ok host 5:3002 reply 5:1002",
			"chown other 9999:1009 (valid 0x4): ok host 5:3009 reply 5:1009",
		},
	},
	{
		name: "unmapped caller",
		args: []string{"--translate-uid", "map:1000:2000:10", "--translate-gid", "map:1000:3000:10"},
		uid:  5, gid: 6,
		run: func(s *idSession) { s.create("a") },
		want: []string{
			"create a: ok host 5:6 reply 5:6",
			"mkdir a.d: ok host 5:6 reply 5:6",
		},
	},
	{
		name: "one way",
		args: []string{"--translate-uid", "guest:1000:2000:10", "--translate-gid", "host:3000:1000:10"},
		uid:  1005, gid: 1006,
		run: func(s *idSession) {
			s.create("a")
			s.hostFile("h", 2003, 3004)
		},
		want: []string{
			"create a: ok host 2005:1006 reply 2005:1006",
			"mkdir a.d: ok host 2005:1006 reply 2005:1006",
			"host 2003:3004: lookup ok 2003:1004 getattr ok 2003:1004",
		},
	},
	{
		name: "squash",
		args: []string{"--translate-uid", "squash-guest:1000:2000:10", "--translate-uid", "squash-host:0:50:1000", "--translate-gid", "squash-host:3000:1:10"},
		uid:  1005, gid: 1006,
		run: func(s *idSession) {
			s.create("a")
			s.hostFile("h1", 999, 3009)
			s.hostFile("h2", 1000, 3010)
		},
		want: []string{
			"create a: ok host 2000:1006 reply 2000:1006",
			"mkdir a.d: ok host 2000:1006 reply 2000:1006",
			"host 999:3009: lookup ok 50:1 getattr ok 50:1",
			"host 1000:3010: lookup ok 1000:3010 getattr ok 1000:3010",
		},
	},
	{
		name: "forbidden caller",
		args: []string{"--translate-uid", "forbid-guest:7:2", "--translate-gid", "forbid-guest:17:2"},
		uid:  8, gid: 1,
		run: func(s *idSession) {
			s.create("a")
			s.hostFile("h", 7, 17)
		},
		want: []string{
			"create a: input/output error host absent reply 0:0",
			"mkdir a.d: input/output error host absent reply 0:0",
			"host 7:17: lookup ok 7:17 getattr ok 7:17",
		},
	},
	{
		name: "forbidden owner",
		args: []string{"--translate-uid", "forbid-guest:7:2", "--translate-gid", "forbid-guest:17:2"},
		uid:  1, gid: 18,
		run: func(s *idSession) {
			s.create("a")
			n := s.hostFile("h", 7, 17)
			s.chown("h", n, fuid, 7, 0)
			s.chown("h", n, fuid, 8, 0)
			s.chown("h", n, fgid, 0, 18)
			s.chown("h", n, fboth, 9, 16)
		},
		want: []string{
			"create a: input/output error host absent reply 0:0",
			"mkdir a.d: input/output error host absent reply 0:0",
			"host 7:17: lookup ok 7:17 getattr ok 7:17",
			"chown h 7:0 (valid 0x2): input/output error host 7:17 reply 0:0",
			"chown h 8:0 (valid 0x2): input/output error host 7:17 reply 0:0",
			"chown h 0:18 (valid 0x4): input/output error host 7:17 reply 0:0",
			"chown h 9:16 (valid 0x6): ok host 9:16 reply 9:16",
		},
	},
	{
		name: "forbid-guest past the last id",
		args: []string{"--translate-uid", "forbid-guest:4294967295:2"},
		uid:  0, gid: 0,
		run: func(s *idSession) {
			s.create("a")
			n := s.hostFile("h", 3, 3)
			s.chown("h", n, fuid, 1, 0)
		},
		want: []string{
			"create a: ok host 0:0 reply 0:0",
			"mkdir a.d: ok host 0:0 reply 0:0",
			"host 3:3: lookup ok 3:3 getattr ok 3:3",
			"chown h 1:0 (valid 0x2): ok host 1:3 reply 1:3",
		},
	},
	{
		name: "guest root to a user",
		args: []string{"--translate-uid", "guest:0:1000:1", "--translate-gid", "guest:0:1000:1"},
		uid:  0, gid: 0,
		run: func(s *idSession) { s.create("a") },
		want: []string{
			"create a: ok host 1000:1000 reply 1000:1000",
			"mkdir a.d: ok host 1000:1000 reply 1000:1000",
		},
	},
	{
		name: "a user to host root",
		args: []string{"--translate-uid", "map:1000:0:1", "--translate-gid", "map:1000:0:1"},
		uid:  1000, gid: 1000,
		run: func(s *idSession) {
			s.create("a")
			s.hostFile("h", 0, 0)
		},
		want: []string{
			"create a: ok host 0:0 reply 1000:1000",
			"mkdir a.d: ok host 0:0 reply 1000:1000",
			"host 0:0: lookup ok 1000:1000 getattr ok 1000:1000",
		},
	},
	{
		name: "wrapping target",
		args: []string{"--translate-uid", "guest:0:4294967295:2", "--translate-gid", "guest:0:4294967294:3"},
		uid:  1, gid: 2,
		run: func(s *idSession) { s.create("a") },
		want: []string{
			"create a: ok host 0:0 reply 0:0",
			"mkdir a.d: ok host 0:0 reply 0:0",
		},
	},
}

// TestIDTranslation runs the --translate-uid and --translate-gid scenarios
// against both daemons: each must answer as virtiofsd 1.13.2 did.
func TestIDTranslation(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the daemons create files for other users")
	}
	for _, d := range daemons {
		t.Run(d.name, func(t *testing.T) {
			daemon := d.get(t)
			for _, sc := range idScenarios {
				t.Run(strings.ReplaceAll(sc.name, " ", "_"), func(t *testing.T) {
					s := startIDSession(t, daemon, sc.args, sc.uid, sc.gid)
					sc.run(s)
					if got, want := strings.Join(s.log, "\n"), strings.Join(sc.want, "\n"); got != want {
						t.Errorf("%q as %d:%d:\ngot:\n%s\nwant:\n%s", sc.args, sc.uid, sc.gid, got, want)
					}
				})
			}
		})
	}
}
