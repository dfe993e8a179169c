"""e2e_util.py - helpers the end-to-end scripts share (tests/e2e/e2e_raw.py,
tests/e2e/e2e_limits.py)."""
import socket


def read_until(s, end, limit=1 << 24):
    """Reads until the buffer ends with `end`, EOF, or timeout; the last two
    are marked <EOF> and <TIMEOUT> at the end of what came."""
    buf = b""
    try:
        while not buf.endswith(end) and len(buf) < limit:
            d = s.recv(65536)
            if not d:
                return buf + b"<EOF>"
            buf += d
    except socket.timeout:
        return buf + b"<TIMEOUT>"
    return buf
