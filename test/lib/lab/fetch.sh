#!/usr/bin/env bash
# fetch.sh: fetch and prepare the real-VM test lab for govirtiofsd.
#
# Everything comes from Debian's archive (see shared docs lab.md):
#   - QEMU 10.0 (qemu-system-x86, bookworm-backports), installed into the
#     system with apt-get driven by a private configuration (/etc/apt is not
#     touched); $LAB/bin/qemu-system-x86_64 is a wrapper around it.
#   - the newest linux-image-6.12.*+deb12-amd64 (bookworm-backports),
#     unpacked with dpkg -x; its kernel is copied to $LAB/vmlinuz.
#   - busybox-static (bookworm), at $LAB/busybox.
#   - the reference virtiofsd: 1.14.0 from sid (the default reference,
#     $LAB/bin/virtiofsd-ref) and 1.13.2 from trixie
#     ($LAB/bin/virtiofsd-ref-1.13), each unpacked with its own suite's libc
#     and libraries into a private root ($LAB/virtiofsd-sid-root,
#     $LAB/virtiofsd-trixie-root) and run through that root's loader, as
#     the sid QEMU is (private_root below).
#   - QEMU 11.1 (qemu-system-x86 from sid) for DAX tests: its
#     vhost-user-test-device-pci asks the back-end for a shared memory
#     window. It is unpacked with its sid libc and libraries into
#     $LAB/qemu-sid-root (never installed); $LAB/bin/qemu-sid-x86_64 runs it
#     through the private loader.
#
# The lab lives in ${GOVIRTIOFSD_LAB:-<repo>/.cache/lab}. The script is
# idempotent: every piece that is already in place is kept, so a warm run
# only verifies. Set GOVIRTIOFSD_LAB_REFRESH=1 to fetch the kernel, busybox,
# both virtiofsd and the sid QEMU again (for example to pick up a newer 6.12
# kernel); a sid QEMU that no longer passes the checks is not swapped in.
# GOVIRTIOFSD_DEBIAN_MIRROR overrides the mirror taken from /etc/apt.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
LAB=${GOVIRTIOFSD_LAB:-$repo/.cache/lab}
# --where prints the lab folder and exits (the harness's LabDir must agree).
if [ "${1:-}" = --where ]; then
	echo "$LAB"
	exit 0
fi
mkdir -p "$LAB"
LAB=$(cd "$LAB" && pwd)
refresh=${GOVIRTIOFSD_LAB_REFRESH:-0}

QEMU_WANT="10.0"
VIRTIOFSD_WANT="1.14.0"     # sid: bin/virtiofsd-ref, the default reference
VIRTIOFSD_OLD_WANT="1.13.2" # trixie: bin/virtiofsd-ref-1.13
QEMU_SID_WANT="11.1"
SYSTEM_QEMU=/usr/bin/qemu-system-x86_64

say() { echo "lab: $*"; }
die() {
	echo "lab: FAILED: $*" >&2
	echo "lab: the lab at $LAB is incomplete; fix the cause above and run test/lib/lab/fetch.sh again" >&2
	exit 1
}

# One fetch at a time per lab folder.
exec 9>"$LAB/.lock"
if command -v flock >/dev/null 2>&1; then
	flock 9
fi

[ "$(uname -m)" = x86_64 ] || die "this lab needs an x86_64 host (found $(uname -m))"
for tool in apt-get apt-cache dpkg dpkg-deb; do
	command -v "$tool" >/dev/null 2>&1 || die "missing host tool '$tool' (a Debian host is required)"
done
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$KEYRING" ] || die "missing $KEYRING (package debian-archive-keyring)"

# debian_mirror prints the Debian mirror URI that the machine's own apt
# sources name (the first one ending in /debian), or deb.debian.org.
debian_mirror() {
	if [ -n "${GOVIRTIOFSD_DEBIAN_MIRROR:-}" ]; then
		echo "$GOVIRTIOFSD_DEBIAN_MIRROR"
		return
	fi
	local f uri
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -r "$f" ] || continue
		uri=$(awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }' "$f")
		if [ -n "$uri" ]; then echo "${uri%/}"; return; fi
	done
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -r "$f" ] || continue
		uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\// && $i ~ /\/debian\/?$/) { print $i; exit } }' "$f")
		if [ -n "$uri" ]; then echo "${uri%/}"; return; fi
	done
	echo "http://deb.debian.org/debian"
}
MIRROR=$(debian_mirror)

# Private apt configurations: "bookworm" (bookworm + bookworm-backports),
# "trixie" and "sid". Each has its own sources list, package lists and
# archive cache under $LAB/apt/NAME.
apt_dir() { echo "$LAB/apt/$1"; }
apt_setup() {
	local name=$1 d
	shift
	d=$(apt_dir "$name")
	mkdir -p "$d/lists/partial" "$d/archives/partial"
	local suite want=""
	for suite in "$@"; do
		want+="deb [signed-by=$KEYRING] $MIRROR $suite main"$'\n'
	done
	if [ ! -f "$d/sources.list" ] || [ "$(cat "$d/sources.list")"$'\n' != "$want" ]; then
		printf '%s' "$want" >"$d/sources.list"
	fi
}
apt_opts() {
	local d
	d=$(apt_dir "$1")
	echo "-o Dir::Etc::SourceList=$d/sources.list -o Dir::Etc::SourceParts=/dev/null" \
		"-o Dir::State::Lists=$d/lists -o Dir::Cache::Archives=$d/archives" \
		"-o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null" \
		"-o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -o APT::Sandbox::User=root" \
		"-o DPkg::Lock::Timeout=300 -o Acquire::Retries=3"
}
# apt_update NAME runs apt-get update for a private configuration, once per
# script run.
declare -A updated=()
apt_update() {
	local name=$1 log
	[ -n "${updated[$name]:-}" ] && return 0
	say "apt-get update ($name: $(awk '{print $4}' "$(apt_dir "$name")/sources.list" | paste -sd' '), $MIRROR)"
	log=$(apt_dir "$name")/update.log
	# shellcheck disable=SC2046
	if ! apt-get $(apt_opts "$name") -q update >"$log" 2>&1; then
		cat "$log" >&2
		die "apt-get update of the private $name sources failed (mirror $MIRROR)"
	fi
	if grep -qE '^(W|E): ' "$log"; then
		grep -E '^(W|E): ' "$log" >&2 || true
	fi
	updated[$name]=1
}
# apt_download NAME DEST PKG... downloads .deb files into DEST.
apt_download() {
	local name=$1 dest=$2 log
	shift 2
	mkdir -p "$dest"
	log=$(apt_dir "$name")/download.log
	# shellcheck disable=SC2046
	if ! (cd "$dest" && apt-get $(apt_opts "$name") -q download "$@") >"$log" 2>&1; then
		cat "$log" >&2
		die "apt-get download of $* ($name) failed"
	fi
}
# deb_of DEST PKG prints the newest downloaded .deb of PKG in DEST.
deb_of() {
	local f
	f=$(find "$1" -maxdepth 1 -name "$2_*.deb" | sort -V | tail -n 1)
	[ -n "$f" ] || die "download of $2 left no .deb in $1"
	echo "$f"
}
# write_if_changed FILE MODE: write stdin to FILE unless it already holds it.
write_if_changed() {
	local file=$1 mode=$2 tmp
	tmp=$(mktemp "$file.XXXXXX")
	cat >"$tmp"
	chmod "$mode" "$tmp"
	if [ -f "$file" ] && cmp -s "$tmp" "$file"; then
		rm -f "$tmp"
	else
		mv -f "$tmp" "$file"
	fi
}

mkdir -p "$LAB/bin" "$LAB/debs"
apt_setup bookworm bookworm bookworm-backports
apt_setup trixie trixie
apt_setup sid sid

# ---------------------------------------------------------------- QEMU 10.0
qemu_version() { "$SYSTEM_QEMU" --version 2>/dev/null | head -n 1 || true; }
if qemu_version | grep -q "version $QEMU_WANT\."; then
	say "QEMU: $(qemu_version) (already installed)"
else
	[ "$(id -u)" = 0 ] || die "QEMU $QEMU_WANT: installing qemu-system-x86 from bookworm-backports needs root"
	apt_update bookworm
	say "QEMU: apt-get install -t bookworm-backports qemu-system-x86 (private sources, /etc/apt untouched)"
	log=$(apt_dir bookworm)/install.log
	# shellcheck disable=SC2046
	if ! DEBIAN_FRONTEND=noninteractive apt-get $(apt_opts bookworm) -q -y \
		--no-install-recommends -t bookworm-backports \
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
		install qemu-system-x86 >"$log" 2>&1; then
		tail -n 30 "$log" >&2
		die "QEMU $QEMU_WANT: apt-get install of qemu-system-x86 from bookworm-backports failed (log $log)"
	fi
	qemu_version | grep -q "version $QEMU_WANT\." ||
		die "QEMU $QEMU_WANT: after install $SYSTEM_QEMU reports '$(qemu_version)'"
	say "QEMU: $(qemu_version)"
fi
write_if_changed "$LAB/bin/qemu-system-x86_64" 0755 <<EOF
#!/bin/sh
# QEMU $QEMU_WANT from bookworm-backports, installed by test/lib/lab/fetch.sh.
exec $SYSTEM_QEMU "\$@"
EOF

# ------------------------------------------------------------ guest kernel
if [ "$refresh" != 1 ] && [ -s "$LAB/vmlinuz" ] && [ -s "$LAB/kernel.version" ]; then
	say "kernel: $(cat "$LAB/kernel.version") (cached)"
else
	apt_update bookworm
	# shellcheck disable=SC2046
	kpkg=$(apt-cache $(apt_opts bookworm) search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-amd64$' |
		awk '{print $1}' | sort -V | tail -n 1)
	[ -n "$kpkg" ] || die "guest kernel: no linux-image-6.12.*+deb12-amd64 in bookworm-backports"
	say "kernel: downloading $kpkg"
	rm -f "$LAB"/debs/linux-image-6.12.*.deb
	apt_download bookworm "$LAB/debs" "$kpkg"
	deb=$(deb_of "$LAB/debs" "$kpkg")
	rm -rf "$LAB/kernel.tmp"
	dpkg -x "$deb" "$LAB/kernel.tmp" || die "guest kernel: dpkg -x $deb failed"
	vmlinuz=$(find "$LAB/kernel.tmp/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n 1)
	[ -n "$vmlinuz" ] || die "guest kernel: $deb holds no boot/vmlinuz-*"
	rm -rf "$LAB/kernel"
	mv "$LAB/kernel.tmp" "$LAB/kernel"
	cp "$LAB/kernel/boot/$(basename "$vmlinuz")" "$LAB/vmlinuz.tmp"
	mv -f "$LAB/vmlinuz.tmp" "$LAB/vmlinuz"
	echo "${kpkg#linux-image-}" >"$LAB/kernel.version"
	say "kernel: $(cat "$LAB/kernel.version") at $LAB/vmlinuz"
fi

# ----------------------------------------------------------------- busybox
busybox_ok() { [ -x "$LAB/busybox" ] && "$LAB/busybox" --list 2>/dev/null | grep -qx sh; }
if [ "$refresh" != 1 ] && busybox_ok; then
	say "busybox: cached"
else
	apt_update bookworm
	say "busybox: downloading busybox-static (bookworm)"
	rm -f "$LAB"/debs/busybox-static_*.deb
	apt_download bookworm "$LAB/debs" busybox-static/bookworm
	deb=$(deb_of "$LAB/debs" busybox-static)
	rm -rf "$LAB/busybox-root"
	dpkg -x "$deb" "$LAB/busybox-root" || die "busybox: dpkg -x $deb failed"
	bb=""
	for c in "$LAB/busybox-root/bin/busybox" "$LAB/busybox-root/usr/bin/busybox"; do
		if [ -f "$c" ] && [ -x "$c" ]; then bb=$c; break; fi
	done
	[ -n "$bb" ] || die "busybox: $deb holds no bin/busybox"
	cp "$bb" "$LAB/busybox.tmp"
	chmod 0755 "$LAB/busybox.tmp"
	mv -f "$LAB/busybox.tmp" "$LAB/busybox"
fi
busybox_ok || die "busybox: $LAB/busybox does not run (busybox --list lists no sh)"

# ------------------------------------------------------ QEMU 11.1 (sid)
# QEMU 11.1's vhost-user-test-device-pci is the only upstream device that
# gives a vhost-user back-end a shared memory window (DAX). sid's QEMU needs
# sid's glibc, so it is never installed: the packages are unpacked into
# $LAB/qemu-sid-root and run through that root's own loader (with
# --inhibit-cache, so the host's ld.so.cache is not consulted). The library
# list is shared/docs/sid-qemu-libs.txt: the libraries qemu-system-x86_64
# links, directly or through other libraries, plus what their plugins need
# (libsasl2-modules-db, libdb5.3t64 for SASL; libexecs1 for vdeplug). The
# private loader's --list must resolve every linked library inside the
# root; one that would come from the host fails the fetch, named.
SID_QEMU_PKGS="qemu-system-x86 qemu-system-common qemu-system-data libc6 seabios ipxe-qemu"
SID_QEMU_LIBS="libaio1t64 libbpf1 libcapstone5 libfdt1 libfuse3-4 libglib2.0-0t64
	libgmp10 libgnutls30t64 libhogweed6t64 libibverbs1 libjpeg62-turbo
	libnettle8t64 libnuma1 libpixman-1-0 libpmem1 libpng16-16t64 librdmacm1t64
	libsasl2-2 libseccomp2 libslirp0 libudev1 liburing2 libvdeplug2t64 libzstd1
	zlib1g libelf1t64 libatomic1 libffi8 libmount1 libpcre2-8-0 libselinux1
	libidn2-0 libp11-kit0 libtasn1-6 libunistring5 libnl-3-200
	libnl-route-3-200 libdaxctl1 libndctl6 libsasl2-modules-db libssl3t64
	libexecs1 libblkid1 libsystemd0 libkmod2 libuuid1 libdb5.3t64"
SID_ROOT="$LAB/qemu-sid-root"
# A private root is a folder R into which packages of one suite are
# unpacked with dpkg -x, that suite's libc among them; its programs run
# through R's own loader with --inhibit-cache and R's library folders, so
# the host's libraries and ld.so.cache are never used (the sid QEMU and both
# reference virtiofsd). root_run ROOT EXE ARGS... runs ROOT/EXE so.
root_run() {
	local r=$1 exe=$2
	shift 2
	"$r/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --inhibit-cache \
		--library-path "$r/usr/lib/x86_64-linux-gnu:$r/lib/x86_64-linux-gnu" \
		"$r/$exe" "$@"
}
# root_wrapper FILE ROOTNAME EXE COMMENT writes the script FILE that runs
# EXE of $LAB/ROOTNAME as root_run does, wherever the lab folder is moved.
root_wrapper() {
	local file=$1 root=$2 exe=$3 comment=$4
	write_if_changed "$file" 0755 <<EOF
#!/bin/sh
# $comment
# Run from ../$root through that root's own loader and libraries (the
# host's libraries and ld.so.cache are not used); written by
# test/lib/lab/fetch.sh.
R="\$(cd "\$(dirname "\$0")/.." && pwd)/$root"
exec "\$R/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --inhibit-cache \\
	--library-path "\$R/usr/lib/x86_64-linux-gnu:\$R/lib/x86_64-linux-gnu" \\
	"\$R/$exe" "\$@"
EOF
}
# root_unresolved ROOT EXE prints each library that ROOT/EXE links but the
# private loader does not find inside ROOT ("NAME => where").
root_unresolved() {
	local r=$1 out
	out=$("$r/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --inhibit-cache \
		--library-path "$r/usr/lib/x86_64-linux-gnu:$r/lib/x86_64-linux-gnu" \
		--list "$r/$2" 2>&1) || true
	# Lines are "NAME => PATH (0xADDR)", "NAME => not found", or the
	# loader and vdso without "=>".
	echo "$out" | awk -v r="$r/" '
		/error while loading|cannot open|not found/ && !/=>/ { print; next }
		/=>/ { p = $3; if ($3 == "not") p = "not found"
		       if (index(p, r) != 1) print $1 " => " p; next }
		/^[ \t]*\// { if (index($1, r) != 1) print $1 " (outside the root)" }'
}
# private_root WHAT SUITE ROOT EXE PKG... downloads PKG... from SUITE (each
# as PKG/SUITE; the suite's libc6 among them) and unpacks them into
# ROOT.tmp, which must then hold EXE and the suite's loader. The caller
# checks the result (root_check, what the program says) and puts it in
# place with root_commit. WHAT names the piece in messages.
private_root() {
	local what=$1 suite=$2 root=$3 exe=$4 debs p deb f have absent
	shift 4
	local pkgs=("$@")
	debs="$LAB/debs/$(basename "$root")"
	apt_update "$suite"
	# Name every package the suite lacks before downloading any (one
	# apt-cache run: each one reads the whole package list).
	# shellcheck disable=SC2046
	have=$(apt-cache $(apt_opts "$suite") show --no-all-versions "${pkgs[@]/%//$suite}" 2>/dev/null |
		awk '$1 == "Package:" { print $2 }' || true)
	absent=()
	for p in "${pkgs[@]}"; do
		grep -qxF "$p" <<<"$have" || absent+=("$p")
	done
	[ ${#absent[@]} -eq 0 ] || die "$what: $suite has no package ${absent[*]}"
	rm -rf "$debs"
	apt_download "$suite" "$debs" "${pkgs[@]/%//$suite}"
	rm -rf "$root.tmp"
	for p in "${pkgs[@]}"; do
		deb=$(deb_of "$debs" "$p")
		dpkg -x "$deb" "$root.tmp" || die "$what: dpkg -x $deb failed"
	done
	for f in "$exe" usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2; do
		[ -e "$root.tmp/$f" ] || die "$what: the unpacked $suite packages hold no $f"
	done
}
# root_check WHAT ROOT EXE fails the fetch, naming them, when libraries
# that ROOT/EXE links would come from outside ROOT.
root_check() {
	local miss
	miss=$(root_unresolved "$2" "$3")
	[ -z "$miss" ] || die "$1: libraries not found in the private root $2 (add their packages): $(echo "$miss" | paste -sd';' | sed 's/;/; /g')"
}
# root_commit ROOT marks ROOT.tmp complete and puts it in ROOT's place.
root_commit() {
	touch "$1.tmp/.complete"
	rm -rf "$1"
	mv "$1.tmp" "$1"
}
QEMU_SID_EXE=usr/bin/qemu-system-x86_64
qemu_sid_version() { root_run "$SID_ROOT" "$QEMU_SID_EXE" --version 2>/dev/null | head -n 1 || true; }
if [ "$refresh" != 1 ] && [ -f "$SID_ROOT/.complete" ] && qemu_sid_version | grep -q "version $QEMU_SID_WANT\."; then
	say "QEMU sid: $(qemu_sid_version) (cached)"
else
	# shellcheck disable=SC2206
	pkgs=($SID_QEMU_PKGS $SID_QEMU_LIBS)
	say "QEMU sid: downloading $SID_QEMU_PKGS and $(echo $SID_QEMU_LIBS | wc -w) libraries (sid)"
	private_root "QEMU sid" sid "$SID_ROOT" "$QEMU_SID_EXE" "${pkgs[@]}"
	[ -e "$SID_ROOT.tmp/usr/share/seabios/bios-256k.bin" ] || die "QEMU sid: the unpacked sid packages hold no usr/share/seabios/bios-256k.bin"
	# QEMU finds its modules and firmware relative to its executable
	# through <exec dir>/qemu-bundle. Run through the loader, the
	# executable is the loader in usr/lib/x86_64-linux-gnu, so point the
	# bundle from there back to the root; without it QEMU looks in the
	# host's /usr/share/qemu and aborts.
	ln -sfn ../../.. "$SID_ROOT.tmp/usr/lib/x86_64-linux-gnu/qemu-bundle"
	root_check "QEMU sid (add their sid packages to SID_QEMU_LIBS)" "$SID_ROOT.tmp" "$QEMU_SID_EXE"
	v=$(root_run "$SID_ROOT.tmp" "$QEMU_SID_EXE" --version 2>&1 | head -n 1 || true)
	echo "$v" | grep -q "version $QEMU_SID_WANT\." || die "QEMU sid: the sid qemu-system-x86 says '$v', want $QEMU_SID_WANT (sid moved on; pin it or update QEMU_SID_WANT)"
	root_commit "$SID_ROOT"
	say "QEMU sid: $v in $SID_ROOT"
fi
root_wrapper "$LAB/bin/qemu-sid-x86_64" qemu-sid-root "$QEMU_SID_EXE" \
	"QEMU $QEMU_SID_WANT from Debian sid, with its sid libc and libraries."

# ------------------------------------------------ reference virtiofsd
# Two versions side by side, each in a private root of its own suite:
# 1.14.0 (sid) is the default reference, bin/virtiofsd-ref; 1.13.2
# (trixie) is bin/virtiofsd-ref-1.13. Each needs its suite's glibc, newer
# than bookworm's, so neither is installed.
VIRTIOFSD_PKGS="virtiofsd libc6 libseccomp2 libcap-ng0 libgcc-s1"
VIRTIOFSD_EXE=usr/libexec/virtiofsd
# Labs from before the two versions hold 1.13.2 in virtiofsd-root: keep it.
if [ -x "$LAB/virtiofsd-root/$VIRTIOFSD_EXE" ] && [ ! -e "$LAB/virtiofsd-trixie-root" ]; then
	mv "$LAB/virtiofsd-root" "$LAB/virtiofsd-trixie-root"
	touch "$LAB/virtiofsd-trixie-root/.complete"
fi
# virtiofsd_version ROOT prints what the virtiofsd in ROOT says.
virtiofsd_version() { root_run "$1" "$VIRTIOFSD_EXE" --version 2>/dev/null | head -n 1 || true; }
# fetch_virtiofsd SUITE WANT ROOTNAME WRAPPER puts virtiofsd WANT from SUITE
# into $LAB/ROOTNAME and writes $LAB/bin/WRAPPER, which runs it.
fetch_virtiofsd() {
	local suite=$1 want=$2 rootname=$3 wrapper=$4 root v
	root="$LAB/$rootname"
	if [ "$refresh" != 1 ] && [ -f "$root/.complete" ] && [ "$(virtiofsd_version "$root")" = "virtiofsd $want" ]; then
		say "virtiofsd $want: cached"
	else
		say "virtiofsd $want: downloading $VIRTIOFSD_PKGS ($suite)"
		# shellcheck disable=SC2086
		private_root "virtiofsd $want" "$suite" "$root" "$VIRTIOFSD_EXE" $VIRTIOFSD_PKGS
		root_check "virtiofsd $want" "$root.tmp" "$VIRTIOFSD_EXE"
		v=$(virtiofsd_version "$root.tmp")
		[ "$v" = "virtiofsd $want" ] || die "virtiofsd $want: the $suite virtiofsd says '$v' ($suite moved on; update VIRTIOFSD_WANT here and the versions the tests expect)"
		root_commit "$root"
		say "virtiofsd $want: in $root"
	fi
	# The wrapper is written once its root is in place, so that a test
	# running meanwhile never meets a wrapper without its root.
	root_wrapper "$LAB/bin/$wrapper" "$rootname" "$VIRTIOFSD_EXE" \
		"Reference virtiofsd $want from Debian $suite, with its $suite libc and libraries."
}
fetch_virtiofsd sid "$VIRTIOFSD_WANT" virtiofsd-sid-root virtiofsd-ref
fetch_virtiofsd trixie "$VIRTIOFSD_OLD_WANT" virtiofsd-trixie-root virtiofsd-ref-1.13

# ------------------------------------------------------------------ verify
v=$("$LAB/bin/qemu-system-x86_64" --version 2>&1 | head -n 1 || true)
echo "$v" | grep -q "version $QEMU_WANT\." || die "QEMU: $LAB/bin/qemu-system-x86_64 --version says '$v', want $QEMU_WANT"
v=$("$LAB/bin/virtiofsd-ref" --version 2>&1 | head -n 1 || true)
[ "$v" = "virtiofsd $VIRTIOFSD_WANT" ] || die "virtiofsd: $LAB/bin/virtiofsd-ref --version says '$v', want $VIRTIOFSD_WANT"
vo=$("$LAB/bin/virtiofsd-ref-1.13" --version 2>&1 | head -n 1 || true)
[ "$vo" = "virtiofsd $VIRTIOFSD_OLD_WANT" ] || die "virtiofsd: $LAB/bin/virtiofsd-ref-1.13 --version says '$vo', want $VIRTIOFSD_OLD_WANT"
[ -s "$LAB/vmlinuz" ] || die "guest kernel: $LAB/vmlinuz missing"
[ -x "$LAB/busybox" ] || die "busybox: $LAB/busybox missing"
vs=$(qemu_sid_version)
echo "$vs" | grep -q "version $QEMU_SID_WANT\." || die "QEMU sid: $LAB/bin/qemu-sid-x86_64 --version says '$vs', want $QEMU_SID_WANT"
say "ready in $LAB: $("$LAB/bin/qemu-system-x86_64" --version | head -n 1), $vs (sid, DAX), $v (reference), $vo, kernel $(cat "$LAB/kernel.version")"
