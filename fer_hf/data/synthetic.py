"""Procedurally drawn, FER-2013-shaped stand-in dataset.

The images are 48x48 grayscale cartoon faces whose *expression* decides the label, using the FER-2013 label order
(0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral). Each class is a distinct combination of facial
parts (mouth curve and opening, brow angle/height/arch, eye opening, nose wrinkles, lip asymmetry) whose parameters
are sampled from ranges that partly overlap between related classes (fear/surprise, sad/neutral, angry/disgust), so
no single cue is always enough. Position, size, rotation, brightness, contrast, lighting, hair, noise and blur vary
independently of the label.

Generation is deterministic: image ``i`` depends only on ``(seed, i)``, so ``make_faces(n, seed)`` is always a prefix
of ``make_faces(m, seed)`` for ``m >= n``. Faces are drawn at 4x resolution with PIL and box-downsampled, which gives
anti-aliased edges at a fraction of the cost of drawing with anti-aliasing primitives.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fer_hf.labels import IMAGE_SIZE, NUM_LABELS

logger = logging.getLogger(__name__)

__all__ = ["make_faces"]


# Drawing happens on a canvas this many times larger; box-downsampling then anti-aliases every edge for free.
_SUPERSAMPLE = 4
# Independent SeedSequence streams, so per-image pixels and per-block label shuffles never share random numbers.
_IMAGE_STREAM = 0
_LABEL_STREAM = 1
_ELLIPSE_POINTS = 40
_CURVE_POINTS = 11
# Upper bound on the number of uniform draws one face needs (see _Sampler).
_UNIFORM_BLOCK = 48
# Images per vectorised post-processing batch: large enough to amortise numpy overhead, small enough to stay in cache.
_CHUNK = 256

# Face units are 48-px pixels at this scale; >1 makes faces fill the frame like FER-2013's tight crops (large faces
# lose a little forehead or chin), which keeps the expression cues big enough to survive random-resized-crop.
_BASE_SCALE = 1.18

Range = tuple[float, float]


@dataclass(frozen=True)
class _ExpressionSpec:
    """Sampling ranges (in 48-px face units, before scaling) of the label-bearing facial parts of one class.

    Brow geometry: ``brow_height`` is how far the brow centre sits above the eye centre, ``brow_tilt`` is how much
    lower the inner end is than the outer end (positive = angry V, negative = worried / sad), ``brow_arch`` lifts
    the middle of the brow. Mouth geometry: ``mouth_curve`` > 0 lifts the corners (smile), ``mouth_open`` is the
    vertical gap between the lips, ``mouth_upper`` is the share of the opening above the mouth line (small values
    give a D-shaped grin), ``mouth_asym`` raises one corner (disgust sneer).
    """

    eye_open: Range
    brow_height: Range
    brow_tilt: Range
    brow_arch: Range
    mouth_width: Range
    mouth_curve: Range
    mouth_open: Range
    mouth_upper: Range = (0.45, 0.55)
    mouth_asym: Range = (0.0, 0.0)
    nose_wrinkle: bool = False


# Indexed by FER-2013 label. Ranges deliberately overlap on some cues between neighbouring classes; each pair of
# classes stays separable through at least one other cue.
_SPECS: tuple[_ExpressionSpec, ...] = (
    # 0 angry: low V brows, narrowed eyes, tight closed (slightly frowning) mouth.
    _ExpressionSpec(
        eye_open=(0.7, 1.4),
        brow_height=(2.5, 3.3),
        brow_tilt=(2.8, 4.2),
        brow_arch=(-0.2, 0.2),
        mouth_width=(3.2, 4.6),
        mouth_curve=(-1.4, 0.0),
        mouth_open=(0.0, 0.6),
    ),
    # 1 disgust: mildly lowered brows, squinted eyes, wrinkled nose, one-sided raised upper lip.
    _ExpressionSpec(
        eye_open=(0.6, 1.1),
        brow_height=(2.7, 3.5),
        brow_tilt=(0.6, 1.8),
        brow_arch=(-0.2, 0.3),
        mouth_width=(4.0, 5.5),
        mouth_curve=(-1.4, -0.2),
        mouth_open=(1.0, 2.2),
        mouth_upper=(0.65, 0.85),
        mouth_asym=(2.0, 3.4),
        nose_wrinkle=True,
    ),
    # 2 fear: raised brows with inner ends up, wide eyes, horizontally stretched open mouth.
    _ExpressionSpec(
        eye_open=(2.3, 3.2),
        brow_height=(4.6, 5.8),
        brow_tilt=(-2.6, -1.2),
        brow_arch=(-0.2, 0.4),
        mouth_width=(5.4, 7.2),
        mouth_curve=(-1.2, 0.2),
        mouth_open=(2.0, 3.6),
    ),
    # 3 happy: relaxed brows, smiling (slightly squinted) eyes, upturned mouth, often an open D-shaped grin.
    _ExpressionSpec(
        eye_open=(0.9, 1.8),
        brow_height=(3.4, 4.4),
        brow_tilt=(-0.5, 0.5),
        brow_arch=(0.3, 1.0),
        mouth_width=(5.5, 7.5),
        mouth_curve=(2.8, 5.0),
        mouth_open=(0.0, 4.0),
        mouth_upper=(0.15, 0.3),
    ),
    # 4 sad: inner brow ends raised, normal-to-lowered eyes, downturned closed mouth.
    _ExpressionSpec(
        eye_open=(0.9, 1.5),
        brow_height=(3.0, 4.0),
        brow_tilt=(-3.8, -2.2),
        brow_arch=(-0.2, 0.4),
        mouth_width=(4.2, 6.0),
        mouth_curve=(-4.0, -1.8),
        mouth_open=(0.0, 0.5),
    ),
    # 5 surprise: high arched brows, wide eyes, round "O" mouth.
    _ExpressionSpec(
        eye_open=(2.3, 3.3),
        brow_height=(5.0, 6.6),
        brow_tilt=(-0.6, 0.6),
        brow_arch=(0.8, 1.8),
        mouth_width=(2.0, 3.4),
        mouth_curve=(-0.3, 0.3),
        mouth_open=(3.6, 6.2),
    ),
    # 6 neutral: relaxed everything, near-flat closed mouth.
    _ExpressionSpec(
        eye_open=(1.4, 2.1),
        brow_height=(3.2, 4.4),
        brow_tilt=(-0.4, 0.4),
        brow_arch=(0.0, 0.6),
        mouth_width=(4.0, 5.6),
        mouth_curve=(-0.4, 0.4),
        mouth_open=(0.0, 0.4),
    ),
)


@dataclass(frozen=True)
class _Canvas:
    """Per-call precomputed geometry shared by all images (kept out of module scope so nothing global is mutable)."""

    unit_circle: np.ndarray  # (P, 2) points on the unit circle
    curve_t: np.ndarray  # (C,) parameter in [-1, 1] along mouth / brow curves
    grad_x: np.ndarray  # (48, 48) in [-1, 1], for the lighting gradient
    grad_y: np.ndarray

    @classmethod
    def build(cls) -> _Canvas:
        theta = np.linspace(0.0, 2.0 * math.pi, _ELLIPSE_POINTS, endpoint=False)
        coords = np.linspace(-1.0, 1.0, IMAGE_SIZE, dtype=np.float32)
        grad_y, grad_x = np.meshgrid(coords, coords, indexing="ij")
        return cls(
            unit_circle=np.stack([np.cos(theta), np.sin(theta)], axis=1),
            curve_t=np.linspace(-1.0, 1.0, _CURVE_POINTS),
            grad_x=grad_x,
            grad_y=grad_y,
        )


class _Sampler:
    """Hands out uniform draws from one pre-drawn block; far cheaper than dozens of scalar Generator calls."""

    def __init__(self, rng: np.random.Generator, size: int = _UNIFORM_BLOCK) -> None:
        self._values = rng.random(size).tolist()
        self._next = 0

    def __call__(self, bounds: Range) -> float:
        value = self._values[self._next]
        self._next += 1
        return bounds[0] + (bounds[1] - bounds[0]) * value


def _labels(num_images: int, seed: int) -> np.ndarray:
    """Labels as consecutive seeded permutations of 0..6: exactly balanced per block of 7, prefix-stable in N."""
    num_blocks = -(-num_images // NUM_LABELS)
    blocks = [
        np.random.default_rng([seed, _LABEL_STREAM, block]).permutation(NUM_LABELS) for block in range(num_blocks)
    ]
    if not blocks:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(blocks)[:num_images].astype(np.int64)


class _FaceDrawer:
    """Draws one face on a supersampled canvas, mapping 48-px face coordinates through scale, rotation and shift."""

    def __init__(self, canvas: _Canvas, center: tuple[float, float], scale: float, angle_deg: float) -> None:
        self._canvas = canvas
        rad = math.radians(angle_deg)
        # Row-vector convention: points @ matrix. Scale and supersampling are folded in once.
        k = scale * _SUPERSAMPLE
        self._m = (math.cos(rad) * k, math.sin(rad) * k)
        self._matrix = np.array([[self._m[0], self._m[1]], [-self._m[1], self._m[0]]])
        self._offset = np.array(center) * _SUPERSAMPLE
        self.image = Image.new("L", (IMAGE_SIZE * _SUPERSAMPLE,) * 2)
        self._draw = ImageDraw.Draw(self.image)

    def _map(self, points: np.ndarray) -> list[float]:
        return (points @ self._matrix + self._offset).ravel().tolist()

    def fill(self, value: int) -> None:
        self._draw.rectangle((0, 0, *self.image.size), fill=value)

    def ellipse_points(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return self._canvas.unit_circle * (rx, ry) + (cx, cy)

    def polygon(self, points: np.ndarray, fill: int) -> None:
        self._draw.polygon(self._map(points), fill=fill)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, fill: int) -> None:
        # Fold the ellipse's own scale/offset into the face transform so the unit circle is mapped in one matmul.
        cos_k, sin_k = self._m
        matrix = np.array([[rx * cos_k, rx * sin_k], [-ry * sin_k, ry * cos_k]])
        offset = self._offset + (cx * cos_k - cy * sin_k, cx * sin_k + cy * cos_k)
        self._draw.polygon((self._canvas.unit_circle @ matrix + offset).ravel().tolist(), fill=fill)

    def stroke(self, xs: np.ndarray, ys: np.ndarray, width: float, fill: int) -> None:
        """Thick, roughly horizontal curve, drawn as a band offset vertically by half the width.

        One polygon per stroke is several times cheaper than PIL's ``line(joint="curve")`` (a pieslice per vertex),
        and the slight thinning where the curve is steep reads as a natural taper at brow and mouth corners.
        """
        half = width / 2.0
        self.polygon(np.stack([np.concatenate([xs, xs[::-1]]), np.concatenate([ys - half, ys[::-1] + half])], 1), fill)


def _draw_eye(face: _FaceDrawer, x: float, y: float, half_w: float, half_h: float, tones: dict[str, int]) -> None:
    if half_h < 1.15:
        # Too narrow to show a pupil at 48 px: a dark slit reads as a squint.
        face.ellipse(x, y, half_w, max(half_h * 0.7, 0.45), fill=tones["ink"])
        return
    face.ellipse(x, y, half_w + 0.5, half_h + 0.5, fill=tones["ink"])
    face.ellipse(x, y, half_w, half_h, fill=tones["sclera"])
    pupil = min(1.3, half_h * 0.8)
    face.ellipse(x, y + 0.15, pupil, pupil, fill=tones["ink"])


def _draw_brow(face: _FaceDrawer, side: float, eye_y: float, vals: dict[str, float], t: np.ndarray, tone: int) -> None:
    inner_x, outer_x = 1.8, 10.6
    xs = side * (inner_x + (outer_x - inner_x) * (t + 1.0) / 2.0)
    # Linear tilt from the inner (t=-1) to the outer (t=+1) end, plus a parabolic arch lifting the middle.
    ys = eye_y - vals["brow_height"] - vals["brow_tilt"] * t / 2.0 - vals["brow_arch"] * (1.0 - t * t)
    face.stroke(xs, ys, vals["brow_width"], tone)


def _draw_mouth(face: _FaceDrawer, y0: float, vals: dict[str, float], t: np.ndarray, tone: int) -> None:
    xs = vals["mouth_width"] * t
    # Mouth line: corners rise with a positive curve; asymmetry lifts one corner only (a sneer).
    mid = y0 - vals["mouth_curve"] * t * t - vals["mouth_asym"] * np.maximum(t, 0.0)
    # Elliptic opening profile: a round "O" for narrow mouths, a lens or D-shaped grin for wide ones. The lip width
    # pads both sides so closed mouths (opening ~0) become a plain stroke with the same weight.
    opening = vals["mouth_open"] * np.sqrt(np.clip(1.0 - t * t, 0.0, 1.0))
    pad = vals["lip_width"] / 2.0
    upper = mid - opening * vals["mouth_upper"] - pad
    lower = mid + opening * (1.0 - vals["mouth_upper"]) + pad
    face.polygon(np.stack([np.concatenate([xs, xs[::-1]]), np.concatenate([upper, lower[::-1]])], 1), tone)


def _render(
    index: int, label: int, seed: int, canvas: _Canvas, drawn_out: np.ndarray, noise_out: np.ndarray
) -> tuple[float, float, float, float]:
    """Draw face ``index`` into ``drawn_out`` and its unit sensor noise into ``noise_out`` (both (48, 48) float32).

    Returns the photometric parameters (lighting gradient x / y amplitude, contrast, noise sigma), which
    :func:`_photometrics` applies to a whole chunk at once because per-image numpy calls on 48x48 arrays are
    overhead-bound.
    """
    rng = np.random.default_rng([seed, _IMAGE_STREAM, index])
    # Every draw below happens unconditionally and in a fixed order, so for a given (seed, index) all nuisance
    # factors are identical whatever the label: only the expression depends on the class.
    uniform = _Sampler(rng)
    spec = _SPECS[label]

    vals = {
        "eye_open": uniform(spec.eye_open),
        "brow_height": uniform(spec.brow_height),
        "brow_tilt": uniform(spec.brow_tilt),
        "brow_arch": uniform(spec.brow_arch),
        "mouth_width": uniform(spec.mouth_width),
        "mouth_curve": uniform(spec.mouth_curve),
        "mouth_open": uniform(spec.mouth_open),
        "mouth_upper": uniform(spec.mouth_upper),
        # Random sign: which side sneers must not matter (and horizontal-flip augmentation stays label-preserving).
        "mouth_asym": uniform(spec.mouth_asym) * (1.0 if uniform((0.0, 1.0)) < 0.5 else -1.0),
        "brow_width": uniform((1.6, 2.3)),
        "lip_width": uniform((1.1, 1.6)),
    }

    # Nuisance geometry.
    scale = _BASE_SCALE * uniform((0.8, 1.1))
    center = (24.0 + uniform((-3.0, 3.0)), 23.5 + uniform((-3.0, 3.0)))
    face = _FaceDrawer(canvas, center, scale, uniform((-10.0, 10.0)))
    face_rx = 15.5 * uniform((0.92, 1.08))
    face_ry = 19.5 * uniform((0.94, 1.06))

    # Nuisance tones. Features are always darker than skin by a clear margin so expressions stay visible.
    skin = int(uniform((70.0, 230.0)))
    ink = max(0, skin - int(uniform((90.0, 150.0))))
    tones = {
        "ink": ink,
        "mouth": max(0, ink - 10),
        "sclera": min(255, skin + int(uniform((15.0, 60.0)))),
        "nose": (skin + ink) // 2,
    }
    face.fill(int(uniform((0.0, 255.0))))

    hair_tone = int(uniform((0.0, 255.0)))
    has_hair = uniform((0.0, 1.0)) < 0.65
    hairline = uniform((-16.5, -13.0))
    if has_hair:
        face.ellipse(0.0, -2.5, face_rx * 1.12, face_ry * 1.05, fill=hair_tone)
    # Ears first so the face ellipse covers their inner half.
    for side in (-1.0, 1.0):
        face.ellipse(side * face_rx * 0.98, 1.0, 2.6, 4.0, fill=max(0, skin - 12))
    face.ellipse(0.0, 0.0, face_rx, face_ry, fill=skin)
    if has_hair:
        # Clamp a slightly larger head outline at the hairline, leaving only the cap above it: a fringe.
        cap = face.ellipse_points(0.0, 0.0, face_rx * 1.03, face_ry * 1.03)
        cap[:, 1] = np.minimum(cap[:, 1], hairline)
        face.polygon(cap, fill=hair_tone)

    t = canvas.curve_t
    eye_y = -3.0 + uniform((-0.7, 0.7))
    eye_dx = 6.5 + uniform((-0.5, 0.5))
    eye_w = 3.3 * uniform((0.9, 1.1))
    for side in (-1.0, 1.0):
        _draw_eye(face, side * eye_dx, eye_y, eye_w, vals["eye_open"], tones)
        _draw_brow(face, side, eye_y, vals, t, ink)

    # Nose: a short bridge plus a base; disgust adds wrinkle arcs across the bridge.
    nose_y = 4.5 + uniform((-0.5, 0.5))
    face.polygon(np.array([[0.0, 0.5], [-1.1, nose_y], [0.0, nose_y + 0.6], [1.1, nose_y]]), fill=tones["nose"])
    num_wrinkles = 2 if uniform((0.0, 1.0)) < 0.5 else 3
    if spec.nose_wrinkle:
        for k in range(num_wrinkles):
            y = eye_y + 1.2 + 1.3 * k
            face.stroke(np.array([-2.8, 0.0, 2.8]), np.array([y + 0.7, y, y + 0.7]), 0.9, ink)

    _draw_mouth(face, 10.5 + uniform((-0.8, 0.8)), vals, t, tones["mouth"])

    small = face.image.reduce(_SUPERSAMPLE)
    drawn_out[...] = np.asarray(small.filter(ImageFilter.GaussianBlur(uniform((0.0, 0.6)))))
    rng.standard_normal(out=noise_out, dtype=np.float32)
    light_angle = uniform((0.0, 2.0 * math.pi))
    light = uniform((0.0, 45.0))
    contrast = uniform((0.7, 1.25))
    return light * math.cos(light_angle), light * math.sin(light_angle), contrast, uniform((1.0, 8.0))


def _photometrics(drawn: np.ndarray, noise: np.ndarray, params: np.ndarray, canvas: _Canvas) -> np.ndarray:
    """Directional lighting gradient, contrast around the image mean and sensor noise, vectorised over a chunk."""
    light_x, light_y, contrast, sigma = (params[:, k, None, None] for k in range(4))
    pixels = drawn + light_x * canvas.grad_x + light_y * canvas.grad_y
    mean = pixels.mean(axis=(1, 2), keepdims=True)
    pixels = (pixels - mean) * contrast + mean + noise * sigma
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def make_faces(num_images: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generate synthetic FER-2013-like cartoon faces.

    Args:
        num_images: Number of images to generate (``>= 0``).
        seed: Non-negative dataset seed. Different seeds give independent datasets (e.g. train vs. test).

    Returns:
        ``(pixels, labels)``: ``pixels`` is uint8 of shape ``(N, 48, 48)``, ``labels`` is int64 of shape ``(N,)``
        with values in ``0..6`` (FER-2013 order). Labels come in shuffled blocks of 7, so every class appears exactly
        ``N // 7`` or ``N // 7 + 1`` times.

        Deterministic for ``(num_images, seed)``; image ``i`` depends only on ``(seed, i)``, so a larger
        ``num_images`` extends a smaller one.
    """
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    labels = _labels(num_images, seed)
    pixels = np.empty((num_images, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    canvas = _Canvas.build()
    for start in range(0, num_images, _CHUNK):
        stop = min(start + _CHUNK, num_images)
        drawn = np.empty((stop - start, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        noise = np.empty_like(drawn)
        params = np.empty((stop - start, 4), dtype=np.float32)
        for offset, index in enumerate(range(start, stop)):
            params[offset] = _render(index, int(labels[index]), seed, canvas, drawn[offset], noise[offset])
        pixels[start:stop] = _photometrics(drawn, noise, params, canvas)
    logger.debug("Generated %d synthetic faces (seed=%d)", num_images, seed)
    return pixels, labels
