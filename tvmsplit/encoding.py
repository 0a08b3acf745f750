"""Encoded model inputs: a camera's JPEG on the wire instead of the raw float tensor.

    enc = Encoding(graph.inputs[0], quality=90)       # the model input it decodes into
    data = enc.encode(synthetic_image(224, 224))      # bytes: what the end device sends
    x = enc.decode(data)                              # float32 (1, 3, 224, 224), in [0, 1]
    quality, data = quality_for_bytes(image, 20_000)  # the quality whose JPEG is nearest 20 KB

The decoded tensor is the image's pixels as float32, NCHW (batch 1), each channel value / 255,
so in [0, 1] (``scale="unit"``, the one scaling there is): a model that wants ImageNet mean/std
normalisation gets it from its own first layers or not at all. A 1-channel model input decodes a
grey JPEG ("L"), a 3-channel one RGB (a JPEG of the other kind is converted). The JPEG must have
the model input's height and width (no resizing).

On the wire the encoded input is one tensor of the input's name, ``uint8``, 1-D, of the JPEG's
length: :class:`EncodedSpec` (a ``TensorSpec`` of shape ``(max_bytes,)``, so a worker's frame
limit is its ``max_bytes``) accepts any length from 1 to ``max_bytes``
(``runtime.stage.check_tensors``). Where it is decoded: a bundle that records encodings
(``bundle.encode_inputs``, manifest schema 5) gives each stage that computes on the input a
``runtime.stage.DecodingRunner``, which decodes it before running the stage; a stage that only
forwards it sends the bytes on. Bytes that do not decode, or decode to another size, are refused
with :class:`EncodingError` naming the input and the fix (the worker answers the request with the
error ``bad_input``; it does not crash). The image's pixel count is checked from the JPEG header before any
pixel is decoded, so a small file cannot make a huge image.

The planner charges the decode on the device that runs the layer reading the input
(``partition.problem.Problem.decode_ms``); ``decode_time_ms`` measures it.
"""
from __future__ import annotations

import io
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .errors import TvmsplitError
from .graph import TensorSpec

FORMATS = ("jpeg",)
SCALES = ("unit",)        # pixel / 255: float32 in [0, 1]
QUALITIES = range(1, 101)  # Pillow's JPEG qualities
_FILE_REPR = re.compile(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


class EncodingError(TvmsplitError):
    """An encoding cannot apply to an input, or bytes do not decode to it; the message says why."""


@dataclass(frozen=True)
class Encoding:
    """How one model input travels encoded. ``input``: the model input the bytes decode into
    (float32, NCHW, batch 1, 1 or 3 channels); ``quality``: the JPEG quality ``encode`` uses;
    ``max_bytes``: the largest encoded input a worker accepts (0: the raw tensor's size, since a
    JPEG larger than the tensor it stands for gains nothing)."""

    input: TensorSpec
    format: str = "jpeg"
    quality: int = 90
    scale: str = "unit"
    max_bytes: int = 0

    def __post_init__(self):
        problems = []
        t = self.input
        if self.format not in FORMATS:
            problems.append(f"format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.scale not in SCALES:
            problems.append(f"scale {self.scale!r} is not one of {', '.join(SCALES)}")
        if not (isinstance(self.quality, int) and self.quality in QUALITIES):
            problems.append(f"quality must be an int in 1..100, got {self.quality!r}")
        if not (isinstance(self.max_bytes, int) and self.max_bytes >= 0):
            problems.append(f"max_bytes must be an int >= 0, got {self.max_bytes!r}")
        if t.dtype != "float32" or len(t.shape) != 4 or t.shape[0] != 1 or t.shape[1] not in (1, 3):
            problems.append(f"input {t.name!r} is {t.dtype}{list(t.shape)}; a JPEG decodes into "
                            "float32 [1, C, H, W] with C 1 (grey) or 3 (RGB)")
        if problems:
            raise EncodingError(f"cannot encode input {t.name!r}: {'; '.join(problems)}")

    @property
    def name(self) -> str:
        return self.input.name

    @property
    def height(self) -> int:
        return self.input.shape[2]

    @property
    def width(self) -> int:
        return self.input.shape[3]

    @property
    def channels(self) -> int:
        return self.input.shape[1]

    @property
    def limit_bytes(self) -> int:
        """The size limit of the encoded input on the wire."""
        return self.max_bytes or self.input.nbytes

    @property
    def wire_spec(self) -> "EncodedSpec":
        return EncodedSpec(self.name, "uint8", (self.limit_bytes,), self)

    def describe(self) -> str:
        return (f"{self.format} q{self.quality} -> {self.input.dtype}{list(self.input.shape)} "
                f"/ 255 (at most {self.limit_bytes} bytes)")

    def to_json(self) -> dict[str, Any]:
        return {"input": self.input.to_json(), "format": self.format, "quality": self.quality,
                "scale": self.scale, "max_bytes": self.max_bytes}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Encoding":
        return cls(TensorSpec.from_json(d["input"]), str(d["format"]), int(d["quality"]),
                   str(d["scale"]), int(d["max_bytes"]))

    # ------------------------------------------------------------------------ encode / decode
    def encode(self, image: np.ndarray, quality: int | None = None) -> bytes:
        """The JPEG of ``image`` (uint8, H x W x C or H x W, the input's size) at ``quality``
        (default ``self.quality``)."""
        from PIL import Image

        a = np.asarray(image)
        if a.dtype != np.uint8 or a.shape[:2] != (self.height, self.width):
            raise EncodingError(f"input {self.name!r}: the image is {a.dtype}{list(a.shape)}; "
                                f"encode a uint8 {self.height}x{self.width} image")
        mode = "L" if self.channels == 1 else "RGB"
        im = Image.fromarray(a.squeeze(-1) if a.ndim == 3 and a.shape[2] == 1 else a)
        out = io.BytesIO()
        im.convert(mode).save(out, format="JPEG", quality=int(quality or self.quality))
        return out.getvalue()

    def tensor(self, data: bytes) -> np.ndarray:
        """``data`` as the wire carries it: a uint8 1-D array (no copy)."""
        return np.frombuffer(data, dtype=np.uint8)

    def decode(self, data: bytes | np.ndarray) -> np.ndarray:
        """The model input ``data`` (a JPEG: bytes or a uint8 1-D array) decodes into:
        float32 [1, C, H, W] in [0, 1]. Raises EncodingError for bytes that are not a JPEG of
        the input's size, or more than ``limit_bytes``."""
        from PIL import Image

        raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
        if not 1 <= len(raw) <= self.limit_bytes:
            raise EncodingError(f"input {self.name!r}: {len(raw)} bytes of JPEG; this input "
                                f"takes 1..{self.limit_bytes} bytes")
        try:
            with Image.open(io.BytesIO(raw), formats=["JPEG"]) as im:
                if im.size != (self.width, self.height):  # from the header: nothing decoded yet
                    raise EncodingError(
                        f"input {self.name!r}: the JPEG is {im.size[0]}x{im.size[1]} pixels "
                        f"(width x height); the model takes {self.width}x{self.height}: resize "
                        "before encoding")
                pixels = np.asarray(im.convert("L" if self.channels == 1 else "RGB"))
        except EncodingError:
            raise
        except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError...
            why = _FILE_REPR.sub("", str(exc))  # PIL names the file as <_io.BytesIO object at 0x..>
            raise EncodingError(f"input {self.name!r}: {len(raw)} bytes do not decode as a JPEG "
                                f"(PIL: {why}); send the bytes of a complete "
                                f"{self.width}x{self.height} JPEG file") from None
        chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        return (chw[None].astype(np.float32) / np.float32(255.0)).reshape(self.input.shape)


@dataclass(frozen=True)
class EncodedSpec(TensorSpec):
    """The wire form of an encoded input: ``uint8[n]``, 1 <= n <= ``shape[0]`` (its
    ``encoding.limit_bytes``); ``nbytes`` is that limit (a receiver's frame limit)."""

    encoding: Encoding = None

    def accepts(self, a: np.ndarray) -> bool:
        return a.dtype == np.uint8 and a.ndim == 1 and 1 <= a.shape[0] <= self.shape[0]


# ------------------------------------------------------------------------------- plans
def _wire(specs: Sequence[TensorSpec], encodings: Mapping[str, Encoding]) -> tuple:
    return tuple(encodings[t.name].wire_spec if t.name in encodings else t for t in specs)


def _decoded(specs: Sequence[TensorSpec]) -> tuple:
    return tuple(t.encoding.input if isinstance(t, EncodedSpec) else t for t in specs)


def wire_stage(stage, encodings: Mapping[str, Encoding]):
    """``stage`` (a ``plan.StagePlan``) as its worker sees it: the encoded inputs it receives
    or forwards in their wire form; its library's inputs stay the decoded tensors."""
    return replace(stage, inputs=_wire(stage.inputs, encodings),
                   outputs=_wire(stage.outputs, encodings))


def decoded_stage(stage):
    """The inverse of ``wire_stage``: what the stage's library runner checks."""
    return replace(stage, inputs=_decoded(stage.inputs), outputs=_decoded(stage.outputs))


def wire_specs(specs: Sequence[TensorSpec], encodings: Sequence[Encoding]) -> tuple:
    """Model input specs with the encoded ones in wire form."""
    return _wire(specs, {e.name: e for e in encodings})


def check_encodings(inputs: Sequence[TensorSpec], encodings: Sequence[Encoding]) -> None:
    """Every encoding names a model input, once, and decodes into exactly that tensor."""
    by_name = {t.name: t for t in inputs}
    problems = []
    names = [e.name for e in encodings]
    for e in encodings:
        if e.name not in by_name:
            problems.append(f"{e.name!r} is not a model input ({', '.join(by_name)})")
        elif by_name[e.name] != e.input:
            problems.append(f"{e.name!r} decodes into {e.input.dtype}{list(e.input.shape)}, the "
                            f"model takes {by_name[e.name].dtype}{list(by_name[e.name].shape)}")
    if len(set(names)) != len(names):
        problems.append(f"an input is encoded twice ({', '.join(names)})")
    if problems:
        raise EncodingError(f"input encodings: {'; '.join(problems)}")


# ------------------------------------------------------------------------- test images
def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth synthetic scene, uint8 H x W x 3: a sky-to-ground gradient, a few shaded
    discs and boxes, and a mild texture (smoothed noise), so that its JPEG compresses like a
    photo (a 224x224 one: about 10-30 KB at quality 85-90), not like a flat test card."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    yn, xn = y / max(height - 1, 1), x / max(width - 1, 1)
    img = np.stack([0.35 + 0.4 * yn, 0.55 + 0.2 * xn * (1 - yn), 0.85 - 0.5 * yn], axis=-1)
    for _ in range(10):  # discs and boxes with their own shading
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.08, 0.25) * min(height, width)
        colour = rng.uniform(0.05, 0.95, size=3).astype(np.float32)
        shade = (0.75 + 0.25 * np.cos((y - cy) / r + (x - cx) / r))[..., None]
        if rng.random() < 0.5:
            mask = (y - cy) ** 2 + (x - cx) ** 2 < r * r
        else:
            mask = (np.abs(y - cy) < r) & (np.abs(x - cx) < 0.7 * r)
        img = np.where(mask[..., None], colour * shade, img)
    noise = rng.standard_normal((height, width, 3)).astype(np.float32)
    for axis in (0, 1):  # a 3-tap blur twice: grain, not per-pixel static
        for _ in range(1):
            noise = (np.roll(noise, 1, axis) + noise + np.roll(noise, -1, axis)) / 3
    img = img + 0.08 * noise
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def image_for(encoding: Encoding, seed: int = 0) -> np.ndarray:
    """``synthetic_image`` at the encoded input's size, grey for a 1-channel input."""
    img = synthetic_image(encoding.height, encoding.width, seed)
    if encoding.channels == 1:
        img = (img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
               + 0.5).astype(np.uint8)
    return img


def quality_for_bytes(encoding: Encoding, image: np.ndarray, target_bytes: int
                      ) -> tuple[int, bytes]:
    """The JPEG quality (1..100) whose encoding of ``image`` is nearest ``target_bytes`` (ties:
    the higher quality), and those bytes. Every quality is tried: sizes are not strictly
    monotone in the quality."""
    if not (isinstance(target_bytes, int) and target_bytes > 0):
        raise EncodingError(f"the target JPEG size must be a positive number of bytes, got "
                            f"{target_bytes!r}")
    best = None
    for q in QUALITIES:
        data = encoding.encode(image, q)
        key = (abs(len(data) - target_bytes), -q)
        if best is None or key < best[0]:
            best = (key, q, data)
    return best[1], best[2]


def jpeg_input(graph_inputs: Sequence[TensorSpec], target_bytes: int, seed: int = 0
               ) -> tuple[Encoding, bytes]:
    """For a model with one image input: the encoding at the quality whose JPEG of a synthetic
    scene is nearest ``target_bytes``, and that JPEG."""
    if len(graph_inputs) != 1:
        raise EncodingError(f"an encoded input needs a model with one image input, this one has "
                            f"{len(graph_inputs)} ({', '.join(t.name for t in graph_inputs)})")
    probe = Encoding(graph_inputs[0])
    img = image_for(probe, seed)
    quality, data = quality_for_bytes(probe, img, target_bytes)
    return replace(probe, quality=quality), data


def decode_time_ms(encoding: Encoding, data: bytes, *, min_ms: float = 100.0,
                   repeat: int = 5) -> list[float]:
    """``repeat`` samples of the time to decode ``data`` (ms per decode), each a loop of at
    least ``min_ms`` (so that a capped device's quota periods average out)."""
    encoding.decode(data)  # warm: PIL's codec loaded
    samples = []
    for _ in range(repeat):
        n, start = 0, time.perf_counter()
        while True:
            encoding.decode(data)
            n += 1
            elapsed = (time.perf_counter() - start) * 1e3
            if elapsed >= min_ms:
                break
        samples.append(elapsed / n)
    return samples


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tvmsplit.encoding ENCODING.json JPEG OUT.json [--min-ms MS] [--repeat N]``:
    write ``{"samples_ms": [...]}``, the decode time of JPEG (run inside a device's cgroup)."""
    import argparse
    import json
    from pathlib import Path

    p = argparse.ArgumentParser(prog="python -m tvmsplit.encoding")
    p.add_argument("encoding")
    p.add_argument("jpeg")
    p.add_argument("out")
    p.add_argument("--min-ms", type=float, default=100.0)
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args(argv)
    enc = Encoding.from_json(json.loads(Path(a.encoding).read_text()))
    samples = decode_time_ms(enc, Path(a.jpeg).read_bytes(), min_ms=a.min_ms, repeat=a.repeat)
    Path(a.out).write_text(json.dumps({"samples_ms": samples}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
