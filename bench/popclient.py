"""A fast POP3 client for the benchmark, and a dummy server to measure the client's ceiling.

The client pipelines (RFC 2449 PIPELINING, which both servers announce): it keeps up to
`WINDOW` RETR+DELE pairs in flight, reads replies into one buffer with large recv() calls and
finds each multi-line end (CRLF . CRLF) with bytes.find, so no Python code runs per line.
poplib, which parses every line in Python, tops out well below the servers' rates.

`python3 popclient.py dummy PORT MESSAGE_SIZE` runs the dummy: a server that answers
USER/PASS/STAT/RETR/DELE/QUIT from memory, as fast as Python can, so that the client's own
ceiling can be measured and shown to be far above the figures it reports.
"""
import socket
import sys
import time

WINDOW = 64
TERM = b"\r\n.\r\n"


class Pop3Error(Exception):
    pass


def find_terminator(buf, n):
    """Offset of the first CRLF . CRLF lying wholly inside buf[:n], or -1. Looks for the dot
    (a memchr, several GB/s) rather than the whole string: bytes.find of a pattern ending in
    LF stops at every line end and would halve the client's speed."""
    pos = 2
    while True:
        j = buf.find(b".", pos, n - 2)
        if j < 0:
            return -1
        if buf[j - 2:j + 3] == TERM:
            return j - 2
        pos = j + 1


class Client:
    def __init__(self, port, timeout=120):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.chunk = bytearray(4 << 20)
        self.status()

    def _fill(self):
        data = self.sock.recv(1 << 20)
        if not data:
            raise Pop3Error("connection closed")
        self.buf += data

    def line(self):
        start = 0
        while True:
            i = self.buf.find(b"\r\n", start)
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            start = max(0, len(self.buf) - 1)
            self._fill()

    def status(self):
        line = self.line()
        if not line.startswith(b"+OK"):
            raise Pop3Error(line.decode(errors="replace"))
        return line

    def body(self):
        """Reads a multi-line body through its terminator; returns its octets (with the line
        end before the terminator). What is already buffered is searched first; the rest is
        received into one reused 4 MiB buffer and only searched, never copied, so a 50 MiB
        message costs the client little more than the kernel's copies."""
        if self.buf.startswith(b".\r\n"):
            del self.buf[:3]
            return 0
        i = self.buf.find(TERM)
        if i >= 0:
            del self.buf[:i + 5]
            return i + 2
        seen = len(self.buf)  # body octets received so far
        tail = bytes(self.buf[-4:])
        self.buf.clear()
        chunk = self.chunk
        view = memoryview(chunk)
        while True:
            n = self.sock.recv_into(view)
            if n == 0:
                raise Pop3Error("connection closed inside a message")
            # A terminator that starts in the previous data's last 4 octets.
            joined = tail + bytes(view[:min(n, 4)])
            j = joined.find(TERM)
            if 0 <= j < len(tail):
                self.buf += view[j + 5 - len(tail):n]
                return seen - len(tail) + j + 2
            j = find_terminator(chunk, n)
            if j >= 0:
                self.buf += view[j + 5:n]
                return seen + j + 2
            seen += n
            tail = (tail + bytes(view[max(0, n - 4):n]))[-4:]

    def command(self, text):
        self.sock.sendall(text.encode() + b"\r\n")
        return self.status()

    def login(self, user, password):
        self.command(f"USER {user}")
        self.command(f"PASS {password}")

    def stat(self):
        return int(self.command("STAT").split()[1])

    def retr_dele_all(self, count):
        """Pipelined RETR n + DELE n for n = 1..count; returns the octets retrieved."""
        total = 0
        sent = done = 0
        while done < count:
            batch = []
            while sent < count and sent - done < WINDOW:
                sent += 1
                batch.append(f"RETR {sent}\r\nDELE {sent}\r\n")
            if batch:
                self.sock.sendall("".join(batch).encode())
            self.status()
            total += self.body()
            self.status()
            done += 1
        return total

    def dele_all(self, count):
        """Pipelined DELE n for n = 1..count (at most WINDOW unanswered)."""
        sent = done = 0
        while done < count:
            batch = []
            while sent < count and sent - done < WINDOW:
                sent += 1
                batch.append(f"DELE {sent}\r\n")
            if batch:
                self.sock.sendall("".join(batch).encode())
            self.status()
            done += 1

    def retr(self, n):
        self.sock.sendall(f"RETR {n}\r\n".encode())
        self.status()
        return self.body()

    def quit(self):
        self.command("QUIT")
        self.sock.close()


def dummy(port, size):
    """Single-connection POP3 server answering from memory (for the client's ceiling)."""
    line = b"x" * 74 + b"\r\n"
    body = b"Subject: dummy\r\n\r\n" + line * max(1, size // len(line))
    retr = b"+OK %d octets\r\n" % len(body) + body + b".\r\n"
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(8)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(b"+OK dummy\r\n")
        pending = b""
        open_ = True
        while open_:
            data = conn.recv(65536)
            if not data:
                break
            pending += data
            *lines, pending = pending.split(b"\r\n")
            out = []
            for cmd in lines:
                verb = cmd[:4].upper()
                if verb == b"RETR":
                    out.append(retr)
                elif verb == b"STAT":
                    out.append(b"+OK 1000 0\r\n")
                elif verb == b"QUIT":
                    out.append(b"+OK bye\r\n")
                    open_ = False
                else:
                    out.append(b"+OK\r\n")
            conn.sendall(b"".join(out))
        conn.close()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "dummy":
        dummy(int(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit("usage: popclient.py dummy PORT MESSAGE_SIZE")
