// Package systemd speaks systemd's two process protocols: sd_notify(3),
// through which a service tells systemd that it is ready, reloading or
// stopping and hands it fds to keep, and socket activation
// (sd_listen_fds(3)), through which systemd passes listening sockets and
// stored fds to a starting service.
package systemd
