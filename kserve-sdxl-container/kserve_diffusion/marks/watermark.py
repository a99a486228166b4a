"""The invisible watermark: one fixed 48-bit message, embedded so that invisible-watermark's open decoder reads it.

Anyone decodes it (docs/operations.md):
    WatermarkDecoder("bytes", 48).decode(bgr_pixels, "dwtDctSvd", scales=[36, 0, 0]) == b"AI-GEN"  # images
    WatermarkDecoder("bytes", 48).decode(bgr_frame, "dwtDctSvd", scales=[72, 0, 0]) == b"AI-GEN"  # video frames
The bits go in as the package's `dwtDctSvd` block embedder (`EmbedDwtDctSvd.encode_frame`) puts them, into the
luma's Haar approximation band, computed for all blocks at once (`embed`, checked against the package's own in
tests/unit/test_marks.py). The package's whole-picture encoder is not used, because in 0.2.0 it (1) writes
the new channel into a uint8 array, truncating and wrapping values past 0-255, and (2) swaps the horizontal and
vertical detail bands on the way back (`idwt2((ca, (v, h, d)))`): on generated pictures that cost 20-40 dB of
PSNR. Here only the watermark's own change is added, in floats, to R, G and B alike (a pure luma change), so
a 1024x1024 picture keeps about 43 dB and the bits survive JPEG and WebP at quality 90 (benchmarks/marks.py).
Luma rather than the package's default U channel: JPEG keeps luma at full resolution, and the same strength
costs fewer dB in RGB. Video frames get twice the strength: H.264 and its RGB <-> YUV conversions shifted luma
by about one level on average, which moves each block's value by about a quarter of the image strength - the
bits came back inverted - while at 72 every frame of a 480p MP4 decoded (PSNR about 37 dB a frame).
"""

from __future__ import annotations

import numpy as np

MESSAGE = b"AI-GEN"  # 6 bytes: 48 bits
BITS = tuple(int(bit) for byte in MESSAGE for bit in f"{byte:08b}")
METHOD = "dwtDctSvd"
IMAGE_STRENGTH = 36  # the package's default strength, here in luma (the scales are Y, U, V)
VIDEO_STRENGTH = 72
MIN_PIXELS = 256 * 256  # the package's decoder refuses smaller pictures, so they are left unwatermarked
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # BT.601, as OpenCV's BGR2YUV (the decoder's conversion)


def can_carry(height: int, width: int) -> bool:
    """Whether a picture of this size can carry the watermark (the decoder reads at least 256x256 pixels)."""
    return height * width >= MIN_PIXELS


def scales(strength: int) -> list[int]:
    """The decoder's `scales` argument for a strength: Y, U, V."""
    return [strength, 0, 0]


def _dct_matrix(size: int) -> np.ndarray:
    """The orthonormal DCT-II matrix: D @ block @ D.T is OpenCV's cv2.dct(block)."""
    k, n = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    matrix = np.sqrt(2 / size) * np.cos(np.pi * (2 * n + 1) * k / (2 * size))
    matrix[0] /= np.sqrt(2)
    return matrix


BLOCK = 4
_DCT = _dct_matrix(BLOCK)


def embed(approximation: np.ndarray, strength: int) -> None:
    """The package's `EmbedDwtDctSvd.encode_frame`, on every 4x4 block at once (in place): block k (row-major)
    carries bit k mod 48 in the largest singular value of its DCT, quantised to (q + 0.25 + bit / 2) x strength.
    The package loops in Python over each block (0.45 s for a 1024x1024 picture here, 5 times this);
    tests/unit/test_marks.py checks this gives the package's result."""
    rows, cols = (side // BLOCK * BLOCK for side in approximation.shape)
    grid = approximation[:rows, :cols].reshape(rows // BLOCK, BLOCK, cols // BLOCK, BLOCK).swapaxes(1, 2)
    blocks = grid.reshape(-1, BLOCK, BLOCK).astype(np.float64)
    bits = np.resize(np.array(BITS, np.float64), len(blocks))
    u, singular, v = np.linalg.svd(_DCT @ blocks @ _DCT.T)
    singular[:, 0] = (singular[:, 0] // strength + 0.25 + 0.5 * bits) * strength
    marked = _DCT.T @ (u @ (singular[..., None] * v)) @ _DCT
    approximation[:rows, :cols] = marked.reshape(grid.shape).swapaxes(1, 2).reshape(rows, cols)


def watermarked(rgb: np.ndarray, strength: int = IMAGE_STRENGTH) -> np.ndarray:
    """`rgb` (H x W x 3, uint8) with the watermark embedded; unchanged when it is too small to carry it."""
    import pywt

    if not can_carry(*rgb.shape[:2]):
        return rgb
    pixels = rgb.astype(np.float32)
    luma = pixels @ _LUMA
    rows, cols = luma.shape[0] // 4 * 4, luma.shape[1] // 4 * 4  # the decoder reads whole 4x4 blocks
    approximation, details = pywt.dwt2(luma[:rows, :cols], "haar")
    embed(approximation, strength)
    change = np.zeros_like(luma)
    change[:rows, :cols] = pywt.idwt2((approximation, details), "haar") - luma[:rows, :cols]
    return np.clip(np.rint(pixels + change[..., None]), 0, 255).astype(np.uint8)
