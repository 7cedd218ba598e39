"""Images in message text, as the original TeamTalk clients write them (docs/protocol.md).

An image travels as a text message whose plaintext holds the image's msfs URL
between :data:`IMAGE_START` and :data:`IMAGE_END`; text may stand around it (a
"mixed" message). Pure functions on the plaintext: encoding it into
``msg_data`` is :meth:`Client.encode_text`'s job, as for any text.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_START = "&$#@~^@[{:"
IMAGE_END = ":}]&$~@#@"


@dataclass(frozen=True)
class Image:
    """An image in a message: where to GET it."""

    url: str


Segment = str | Image


def image_text(url: str) -> str:
    """The plaintext of a message that is just the image at ``url``."""
    if IMAGE_END in url:
        raise ValueError("an image URL cannot hold the closing marker")
    return f"{IMAGE_START}{url}{IMAGE_END}"


def segments(text: str) -> list[Segment]:
    """``text`` cut into text and images, in order (no empty text pieces).

    As the original clients do: an opening marker without a closing one after
    it is text, as is everything after it.
    """
    out: list[Segment] = []
    rest = text
    while rest:
        start = rest.find(IMAGE_START)
        end = rest.find(IMAGE_END, start + len(IMAGE_START)) if start >= 0 else -1
        if end < 0:
            out.append(rest)
            break
        if start:
            out.append(rest[:start])
        out.append(Image(rest[start + len(IMAGE_START) : end]))
        rest = rest[end + len(IMAGE_END) :]
    return out


def images(text: str) -> list[str]:
    """The URLs of the images in ``text``, in order."""
    return [s.url for s in segments(text) if isinstance(s, Image)]
