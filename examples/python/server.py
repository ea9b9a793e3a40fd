#!/usr/bin/python3
# A server in Python 3 that tableflip run upgrades without losing a
# request: it takes its listening socket as systemd passes it (fd 3, for
# this pid), says READY=1 on NOTIFY_SOCKET, and on SIGTERM stops
# accepting, finishes the requests in hand and exits.
#
# SIGTERM is blocked in every thread and taken with sigwait by the main
# thread, which does nothing else: a Python signal handler runs in the
# main thread between any two bytecodes, and one that starts a thread (to
# call shutdown, which must not run in the serving thread) deadlocks if
# the signal comes while that thread is itself in Thread.start, as it is
# for every request (CPython's thread list lock is not reentrant).
import http.server, os, signal, socket, socketserver, threading

if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
    raise SystemExit("want one socket passed as systemd does (LISTEN_PID, LISTEN_FDS)")

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"pid %d\n" % os.getpid()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    def server_bind(self):
        pass  # bound already

# Before any thread starts, so that every thread inherits the mask.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
server = Server(None, Handler, bind_and_activate=False)
server.socket = socket.socket(fileno=3)
server.socket.setblocking(False)  # the other generation may take a connection first
serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
serving.start()
notify = os.environ["NOTIFY_SOCKET"].replace("@", "\0", 1)
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", notify)
signal.sigwait({signal.SIGTERM})
server.shutdown()      # stops accepting; serve_forever returns
server.server_close()  # waits for the requests in hand
