//go:build !linux && !darwin && !freebsd

package peercred

func get(int) (Cred, error) { return Cred{}, ErrNotSupported }
