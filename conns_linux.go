//go:build linux

package tableflip

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// openConns counts the connections pid holds open: established TCP
// connections and Unix stream connections accepted on a named socket,
// read from /proc. It is -1 if /proc cannot tell. Sockets with no name,
// such as the handover's socket pairs, are not connections to clients.
func openConns(pid int) int {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	names, err := os.ReadDir(dir)
	if err != nil {
		return -1
	}
	inodes := make(map[string]bool, len(names))
	for _, n := range names {
		target, err := os.Readlink(dir + "/" + n.Name())
		if inode, ok := strings.CutPrefix(target, "socket:["); err == nil && ok {
			inodes[strings.TrimSuffix(inode, "]")] = true
		}
	}
	count := 0
	for _, table := range []string{"tcp", "tcp6", "unix"} {
		n, err := countConns(fmt.Sprintf("/proc/%d/net/%s", pid, table), table == "unix", inodes)
		if err != nil {
			return -1
		}
		count += n
	}
	return count
}

// countConns counts the connected sockets of a /proc/net table whose
// inodes are in inodes.
func countConns(path string, unix bool, inodes map[string]bool) (int, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return 0, nil // no IPv6 here
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	count := 0
	sc := bufio.NewScanner(f)
	sc.Scan() // the header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if unix {
			// Num RefCount Protocol Flags Type St Inode [Path]: a
			// stream (0001), connected (03), with a name.
			if len(fields) >= 8 && fields[4] == "0001" && fields[5] == "03" && inodes[fields[6]] {
				count++
			}
			continue
		}
		// sl local remote st ... inode: established (01).
		if len(fields) >= 10 && fields[3] == "01" && inodes[fields[9]] {
			count++
		}
	}
	return count, sc.Err()
}
