"""The APP1 segments of a JPEG's header and the EXIF orientation in them, in plain bytes arithmetic.

No PIL: reading one tag this way needs no lock (PIL's warnings filter is process-wide, so
``feeding.decode`` guards it with one) and little time holding the GIL (~20 us against PIL's ~150 us
header parse), which is what thread workers share. Pure functions of the file's bytes.
"""
from __future__ import annotations

import functools

ORIENTATIONS = range(1, 9)  # EXIF's eight; anything else reads as 1, as PIL's exif_transpose takes it

_APP1, _START_OF_SCAN = 0xE1, 0xDA  # EXIF and XMP (so any orientation) live in APP1 segments
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RSTn: no length field


def app1_segments(data: bytes) -> list[bytes] | None:
    """The payloads of the JPEG's APP1 segments (EXIF, XMP) before its image data; None if the header
    segments cannot be walked."""
    pos, found = 2, []  # after SOI
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == _START_OF_SCAN:
            return found
        elif marker in _STANDALONE_MARKERS:
            pos += 2
        else:
            length = (data[pos + 2] << 8) | data[pos + 3]
            if marker == _APP1:
                found.append(data[pos + 4:pos + 2 + length])
            pos += 2 + length
    return None


def has_app1(data: bytes) -> bool | None:
    """Whether the JPEG's header segments include an APP1; None if they cannot be walked."""
    segments = app1_segments(data)
    return None if segments is None else bool(segments)


_EXIF_MAGIC, _ORIENTATION_TAG, _SHORT = b"Exif\0\0", 0x0112, 3


def exif_orientation(segments: list[bytes]) -> int | None:
    """The orientation in an EXIF APP1's first IFD (1 when it has none, or an invalid value, as PIL reads
    it), in plain bytes arithmetic: no PIL, no lock, no GIL-bound parsing of every tag. None where PIL
    must decide: XMP (which may carry its own orientation), several EXIF blocks, a malformed one."""
    exif = [s for s in segments if s.startswith(_EXIF_MAGIC)]
    if len(exif) != 1 or len(exif) != len(segments):
        return None
    tiff = exif[0][len(_EXIF_MAGIC):]
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return None
    number = functools.partial(int.from_bytes, byteorder=order)
    ifd = number(tiff[4:8])
    if ifd + 2 > len(tiff):
        return None
    for i in range(number(tiff[ifd:ifd + 2])):
        entry = tiff[ifd + 2 + 12 * i: ifd + 14 + 12 * i]
        if len(entry) < 12:
            return None
        if number(entry[0:2]) == _ORIENTATION_TAG:
            if number(entry[2:4]) != _SHORT or number(entry[4:8]) != 1:
                return None
            value = number(entry[8:10])
            return value if value in ORIENTATIONS else 1
    return 1
