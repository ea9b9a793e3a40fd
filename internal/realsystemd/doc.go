// Package realsystemd boots a real systemd as PID 1 of its own namespaces
// (pid, mount, network, uts, ipc, cgroup) so that tests can see what
// systemd itself does with a unit, not what a fake notify socket receives.
//
// A System is one such boot. Inside it, /run, /dev, /var/log/journal and
// /var/lib/systemd are private, /proc/sys and /sys are read-only, the
// cgroup tree is a cgroup directory of the test's own, and the only units
// systemd can load are stub targets, journald's units and the units the
// test installs. A directory of the test's binaries is bound over
// /usr/local/bin, so that unit files naming /usr/local/bin/… run
// unmodified. Nothing inside can be seen from the machine's own services,
// and nothing is left behind when the System is closed: Boot registers
// the tear-down with t.Cleanup, so it also runs when the test fails.
//
// # Talking to it
//
// Run, Systemctl and Journal run programs inside every namespace through
// util-linux nsenter. InNetns and Dial reach the namespace's loopback from
// the test process itself: from an OS thread that has joined the network
// namespace, so a load client needs no extra process.
//
// # Versions
//
// Options.Usr overlays a directory on /usr inside the mount namespace only
// (a read-only overlayfs, the machine's /usr beneath it). Backports
// returns such a directory for the systemd of Debian's bookworm-backports,
// fetched with apt-get download and unpacked with dpkg -x into a cache
// directory; the machine's packages are never touched.
//
// # Requirements
//
// Linux only. Root, util-linux unshare and nsenter, /lib/systemd/systemd, a cgroup v2
// hierarchy, and for Backports apt-get, dpkg and Debian's mirror (once:
// the tree is cached). Need skips a test that lacks one, and fails it
// when CI=true.
package realsystemd
