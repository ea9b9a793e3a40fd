//go:build unix && !linux

package tableflip

// watchProcess returns how to tell whether pid is still alive, and ok
// false if it is gone already. Without pidfds, kill(pid, 0) is all there
// is: a zombie counts as alive, and a pid reused after the generation
// exited would too.
func watchProcess(pid int) (alive func() bool, release func(), ok bool) {
	alive = killAlive(pid)
	return alive, nil, alive()
}
