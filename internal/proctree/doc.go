// Package proctree reaps the children of a process and reads the process
// tree from /proc: what tableflip check and the bench runner both need to
// start a server, see each of its generations end, and find what is left
// behind.
//
// A Reaper owns wait4 for the whole process: nothing else in it may wait
// for a child (no os/exec Wait), or the Reaper would miss that child's
// status. With BecomeSubreaper (Linux), orphaned descendants, such as an
// old generation whose parent has exited, are re-parented to this process
// and reaped by the Reaper too.
package proctree
