#!/usr/bin/python3
# A server in Python 3 that tableflip run upgrades without losing a
# request: it takes its listening socket as systemd passes it (fd 3, for
# this pid), says READY=1 on NOTIFY_SOCKET, and on SIGTERM stops
# accepting, finishes the requests in hand and exits.
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

server = Server(None, Handler, bind_and_activate=False)
server.socket = socket.socket(fileno=3)
server.socket.setblocking(False)  # the other generation may take a connection first
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
notify = os.environ["NOTIFY_SOCKET"].replace("@", "\0", 1)
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", notify)
server.serve_forever(poll_interval=0.05)
server.server_close()  # waits for the requests in hand
