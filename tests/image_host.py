"""A loopback HTTP server that plays every role an image URL can: good files, slow, endless, redirecting."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

EXIF_ORIENTATION = 0x0112
ROTATED_90 = 6  # "rotate 90 degrees clockwise to display"


def gradient(width: int, height: int) -> Image.Image:
    """A colourful RGB test picture."""
    image = Image.new("RGB", (width, height))
    image.putdata([(x * 255 // width, y * 255 // height, 128) for y in range(height) for x in range(width)])
    return image


def png(image: Image.Image) -> bytes:
    """`image` as PNG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def sideways_jpeg() -> bytes:
    """A JPEG stored 64x96 whose EXIF says to show it rotated: upright it is 96x64."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATED_90
    buffer = io.BytesIO()
    gradient(64, 96).save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


def webp() -> bytes:
    """An 80x72 WebP."""
    buffer = io.BytesIO()
    gradient(80, 72).save(buffer, "WEBP")
    return buffer.getvalue()


def mask(width: int, height: int) -> Image.Image:
    """Black with a white (repaint) rectangle in the middle."""
    image = Image.new("L", (width, height), 0)
    image.paste(255, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    return image


FILES = {
    "/fox.png": (png(gradient(100, 70)), "image/png"),
    "/photo.jpg": (sideways_jpeg(), "image/jpeg"),
    "/pic.webp": (webp(), "image/webp"),
    "/mask.png": (png(mask(50, 35)), "image/png"),
    "/big.png": (png(gradient(600, 600)), "image/png"),
    "/notes.txt": (b"these are not pixels", "text/plain"),
}
SLOW_SECONDS = 6


class ImageHost:
    """Serves FILES plus misbehaving routes on 127.0.0.1; counts the requests each path got."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        host = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                host.hits[self.path] += 1
                # The server under test hangs up when a limit is hit, as it should.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    host.answer(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.server.server_port}"

    def start(self) -> ImageHost:
        """Serve in a background thread."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        """One response, chosen by path."""
        path = handler.path
        if path in FILES:
            body, mime = FILES[path]
            handler.send_response(200)
            handler.send_header("Content-Type", mime)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        elif path.startswith("/redirect/"):  # /redirect/N/TARGET: N hops, then /TARGET
            _, _, hops, target = path.split("/", 3)
            self._redirect(handler, f"/redirect/{int(hops) - 1}/{target}" if int(hops) > 1 else f"/{target}")
        elif path == "/to-file":
            self._redirect(handler, "file:///etc/passwd")
        elif path == "/to-other-loopback":  # loopback again, by another address
            self._redirect(handler, f"http://127.0.0.2:{self.server.server_port}/fox.png")
        elif path == "/to-ipv6-loopback":
            self._redirect(handler, f"http://[::1]:{self.server.server_port}/fox.png")
        elif path == "/to-metadata":
            self._redirect(handler, "http://169.254.169.254/latest/meta-data/")
        elif path == "/slow":  # headers only after the fetch timeout
            time.sleep(SLOW_SECONDS)
            handler.send_response(200)
            handler.end_headers()
        elif path == "/drip":  # a byte every 0.2 s: every read is quick, the whole never ends
            handler.send_response(200)
            handler.end_headers()
            for _ in range(SLOW_SECONDS * 5):
                handler.wfile.write(b"\x89")
                handler.wfile.flush()
                time.sleep(0.2)
        elif path == "/endless":  # no Content-Length, never stops
            handler.send_response(200)
            handler.send_header("Content-Type", "image/png")
            handler.end_headers()
            chunk = b"\0" * 65536
            while True:
                handler.wfile.write(chunk)
        elif path == "/announced-huge":
            handler.send_response(200)
            handler.send_header("Content-Length", str(10**9))
            handler.end_headers()
        else:
            handler.send_response(404)
            handler.end_headers()

    @staticmethod
    def _redirect(handler: BaseHTTPRequestHandler, location: str) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
