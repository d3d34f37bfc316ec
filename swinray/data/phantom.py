"""Synthetic abdominal CT phantom: the built-in dataset, so the platform runs with no data at all.

Each case is a contrast-enhanced (portal-venous) abdomen holding BTCV's 13 organs, drawn as
ellipsoids and tubes in patient millimetres, then jittered, rescaled to a random body size and
smoothly warped, so no two seeds agree. Spacing is anisotropic and cases are stored in four
orientations, so the orientation and spacing transforms have real work to do. The anatomy is
life-size and the requested shape sets the spacing: about 2.3-3 mm pixels and 3.8-4.7 mm slices
at the default 128x128x64 (a 512x512 grid would get clinical 0.6-0.75 mm pixels).

    python -m platform.phantom --out outputs/phantom --cases 8
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from swinray.data.tasks import BTCV_LABELS

LABEL = {name: value for value, name in enumerate(BTCV_LABELS)}  # "liver" -> 6

# Mean HU of each organ in portal-venous CT, label value -> (low, high); a case draws each
# organ's mean uniformly from its range.
ORGAN_HU: dict[int, tuple[float, float]] = {LABEL[name]: hu for name, hu in (
    ("spleen", (100.0, 140.0)),
    ("right_kidney", (150.0, 200.0)),              # enhancing cortex
    ("left_kidney", (150.0, 200.0)),
    ("gallbladder", (0.0, 20.0)),                  # bile
    ("esophagus", (30.0, 60.0)),
    ("liver", (90.0, 130.0)),
    ("stomach", (10.0, 40.0)),                     # fluid-filled
    ("aorta", (160.0, 250.0)),
    ("inferior_vena_cava", (140.0, 200.0)),
    ("portal_and_splenic_veins", (140.0, 200.0)),
    ("pancreas", (80.0, 120.0)),
    ("right_adrenal_gland", (20.0, 50.0)),
    ("left_adrenal_gland", (20.0, 50.0)),
)}
AIR_HU = -1000.0              # outside the body
FAT_HU = (-120.0, -80.0)      # subcutaneous and visceral fat
MUSCLE_HU = (40.0, 60.0)      # abdominal wall, psoas, erector spinae
BONE_HU = (400.0, 700.0)      # vertebrae
SOFT_HU = (20.0, 40.0)        # bowel loops, spinal cord
LUNG_HU = (-870.0, -820.0)    # lung bases around the liver dome

# Tissue classes after the 13 organ labels; all of them are label 0 (background).
FAT, MUSCLE, BONE, SOFT, LUNG = 14, 15, 16, 17, 18
_CLASS_HU = {**ORGAN_HU, FAT: FAT_HU, MUSCLE: MUSCLE_HU, BONE: BONE_HU, SOFT: SOFT_HU,
             LUNG: LUNG_HU}

# Storage orientations (nibabel axis codes), cycled by seed so that any 4 consecutive seeds use
# all of them. "PLI" swaps the two in-plane axes and stores the slices feet first.
ORIENTATIONS = ("RAS", "LPS", "LAS", "PLI")
# Smallest grid: coarser ones can lose an adrenal gland between voxels (checked on 200 seeds).
MIN_IN_PLANE, MIN_SLICES = 48, 16


@dataclass(frozen=True)
class PhantomCase:
    """One generated case, as it will be stored: a NIfTI image/label pair sharing one affine."""

    image: np.ndarray   # int16 HU, the requested shape, in stored voxel order
    label: np.ndarray   # uint8 BTCV labels, same shape
    affine: np.ndarray  # 4x4 float64 voxel -> world (RAS+ mm, NIfTI convention)


class _Canvas:
    """A tissue-class volume painted with shapes given in reference-anatomy millimetres.

    The reference abdomen is RAS+ (+x the patient's right, +y anterior, +z superior) and its
    cavity has semi-axes 115 x 75 mm; each case rescales the grid axes to fit its own body, and
    every shape gets its own random shift and size. `within` keeps a shape inside a region.
    """

    def __init__(self, axes: list[np.ndarray], rng: np.random.Generator):
        self.axes, self.rng = axes, rng
        self.tissue = np.zeros([len(a) for a in axes], np.uint8)
        self.regions: dict[str, np.ndarray] = {}

    def _grid(self, lo, hi):
        """The voxels of the box [lo, hi] (mm): its slices and broadcastable axis coordinates."""
        box = tuple(slice(np.searchsorted(a, low), np.searchsorted(a, high, side="right"))
                    for a, low, high in zip(self.axes, lo, hi))
        return box, np.ix_(*[a[s] for a, s in zip(self.axes, box)])

    def _paint(self, box, mask, cls, within):
        if within is not None:
            mask &= self.regions[within][box]
        self.tissue[box][mask] = cls

    def ellipsoid(self, cls, center, radii, yaw=0.0, pitch=0.0, halo=0.0, within="cavity"):
        """An ellipsoid turned by yaw (about z) then pitch (about x), in degrees. A `halo` paints
        that many mm of fat around it first (the adrenals sit in retroperitoneal fat)."""
        rng = self.rng
        center = np.asarray(center, float) + rng.normal(0, 4.0, 3)
        radii = np.asarray(radii, float) * rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, 3)
        yaw, pitch = np.radians([yaw + rng.normal(0, 5), pitch + rng.normal(0, 5)])
        rot = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
        rot = rot @ np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)],
                              [0, np.sin(pitch), np.cos(pitch)]])
        for fill, r in ([(FAT, radii + halo)] if halo else []) + [(cls, radii)]:
            box, grid = self._grid(center - r.max(), center + r.max())
            d = [g - c for g, c in zip(grid, center)]
            norm = sum(((rot[0, k] * d[0] + rot[1, k] * d[1] + rot[2, k] * d[2]) / r[k]) ** 2
                       for k in range(3))
            self._paint(box, norm <= 1.0, fill, within)

    def tube(self, cls, along, knots, jitter=3.0, within="cavity"):
        """A tube through piecewise-linear knots (t, c1, c2, r1, r2): at position t on axis
        `along`, an ellipse centred at (c1, c2) with radii (r1, r2) on the other two axes."""
        k = np.array(knots, float)
        k[:, 1:3] += self.rng.normal(0, jitter, 2)
        k[:, 3:5] *= self.rng.uniform(0.85, 1.15)
        other = [ax for ax in range(3) if ax != along]
        lo, hi = np.empty(3), np.empty(3)
        lo[along], hi[along] = k[0, 0], k[-1, 0]
        lo[other], hi[other] = (k[:, 1:3] - k[:, 3:5]).min(0), (k[:, 1:3] + k[:, 3:5]).max(0)
        box, grid = self._grid(lo, hi)
        t = grid[along]
        norm = sum(((grid[ax] - np.interp(t, k[:, 0], k[:, 1 + j]))
                    / np.interp(t, k[:, 0], k[:, 3 + j])) ** 2 for j, ax in enumerate(other))
        self._paint(box, norm <= 1.0, cls, within)


def _draw_abdomen(shape, spacing, fov_mm, rng) -> np.ndarray:
    """Tissue classes (uint8, RAS voxel order): organ labels 1-13, then FAT ... LUNG."""
    half_width = fov_mm * rng.uniform(0.40, 0.46)         # body fills most of the field of view
    half_depth = half_width * rng.uniform(0.70, 0.80)
    fat = half_depth * rng.uniform(0.10, 0.20)            # subcutaneous fat, 8-28 mm
    wall = rng.uniform(8.0, 12.0)                         # abdominal wall muscle
    cavity = np.array([half_width - fat - wall, half_depth - fat - wall])
    scale = np.array([115.0, 75.0]) / cavity              # case mm -> reference mm
    z_scale, z_shift = rng.uniform(0.95, 1.08), rng.uniform(-8, 8)
    axes_mm = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    c = _Canvas([axes_mm[0] * scale[0], axes_mm[1] * scale[1], (axes_mm[2] - z_shift) / z_scale],
                rng)

    x, y, _ = np.ix_(*c.axes)
    power = rng.uniform(2.1, 2.6)                         # superellipse: squarer than an ellipse
    for name, semi, cls in (("body", [half_width, half_depth], FAT),
                            ("muscle", [half_width - fat, half_depth - fat], MUSCLE),
                            ("cavity", cavity, FAT)):
        sx, sy = np.asarray(semi) * scale
        c.regions[name] = np.broadcast_to((np.abs(x / sx) ** power + np.abs(y / sy) ** power) <= 1,
                                          c.tissue.shape).copy()
        c.tissue[c.regions[name]] = cls

    end = 400.0                                           # tubes run past any field of view
    for side in (1, -1):                                  # +1 right, -1 left
        c.tube(MUSCLE, 2, [(-end, 33 * side, -85, 22, 12), (end, 33 * side, -85, 22, 12)],
               within="muscle")                           # erector spinae
        c.tube(MUSCLE, 2, [(-end, 45 * side, -45, 22, 18), (-100, 40 * side, -48, 17, 15),
                           (0, 33 * side, -50, 6, 6)])    # psoas, widening towards the pelvis
    for _ in range(12):                                   # bowel loops, lower anterior abdomen
        c.ellipsoid(SOFT, rng.uniform([-90, -20, -130], [90, 55, -30]), rng.uniform(12, 22, 3))
    c.ellipsoid(LUNG, (65, -35, 160), (50, 40, 60))       # lung bases, behind the liver dome
    c.ellipsoid(LUNG, (-65, -35, 155), (50, 40, 60))

    c.ellipsoid(LABEL["stomach"], (-55, 15, 35), (40, 28, 45), yaw=30)
    c.ellipsoid(LABEL["liver"], (55, 5, 55), (65, 62, 70))           # right lobe
    c.ellipsoid(LABEL["liver"], (-15, 35, 70), (45, 28, 32))         # left lobe, over the stomach
    c.ellipsoid(LABEL["spleen"], (-85, -30, 50), (22, 40, 45), yaw=30)
    c.ellipsoid(LABEL["right_kidney"], (60, -45, -45), (24, 22, 52), yaw=-30, pitch=-15)
    c.ellipsoid(LABEL["left_kidney"], (-60, -42, -30), (24, 22, 52), yaw=30, pitch=-15)
    c.ellipsoid(LABEL["gallbladder"], (45, 45, -5), (14, 14, 30), pitch=20)  # under the liver
    c.ellipsoid(LABEL["pancreas"], (30, -2, -15), (18, 15, 22))      # head
    c.tube(LABEL["pancreas"], 0, [(-78, -25, 20, 8, 8), (-40, -3, 10, 10, 9), (0, 10, 0, 11, 10),
                                  (28, 2, -8, 13, 12)])              # body and tail, along x

    dx, dy = rng.normal(0, 3, 2)                          # the vertebra moves as one piece
    for cls, (cx, cy, rx, ry) in ((BONE, (0, -50, 20, 17)), (BONE, (0, -72, 16, 10)),
                                  (SOFT, (0, -70, 7, 6)), (BONE, (0, -88, 4, 12))):
        c.tube(cls, 2, [(z, cx + dx, cy + dy, rx, ry) for z in (-end, end)], jitter=0.0,
               within="muscle")                   # vertebral body, arch, canal, spinous process

    c.tube(LABEL["aorta"], 2, [(-end, -12, -25, 11, 11), (60, -14, -28, 11, 11),
                               (end, -25, -38, 12, 12)])
    c.tube(LABEL["inferior_vena_cava"], 2, [(-end, 22, -25, 11, 9), (40, 25, -25, 12, 10),
                                            (end, 20, -10, 12, 10)])
    c.tube(LABEL["esophagus"], 2, [(55, -28, 8, 8, 6), (90, -12, -8, 8, 6), (end, -5, -20, 8, 6)])
    c.tube(LABEL["portal_and_splenic_veins"], 0, [
        (-75, -33, 22, 5.5, 5.5), (-40, -14, 12, 5.5, 5.5), (0, -2, 0, 6, 6),  # splenic vein
        (12, -5, 0, 6.5, 6.5), (38, 0, 28, 7, 9.5)])                  # confluence to portal vein
    c.ellipsoid(LABEL["right_adrenal_gland"], (44, -40, 22), (6, 12, 16), halo=4.0)
    c.ellipsoid(LABEL["left_adrenal_gland"], (-40, -32, 26), (6, 12, 14), halo=4.0)
    return c.tissue


def _warp(tissue: np.ndarray, spacing: np.ndarray, rng) -> np.ndarray:
    """Resample through a smooth random displacement (about 5 mm RMS, a few bends per field of
    view) so that organs bend together, like anatomy, instead of staying rigid ellipsoids."""
    # A 4x4x4 grid of random displacements spread by Gaussian bumps along each axis: separable,
    # so the full-resolution field costs three small matrix products. Neighbouring bumps overlap,
    # which doubles the RMS: 2.5 mm per control point gives about 5 mm.
    bumps = [np.exp(-0.5 * ((np.linspace(0, 1, n)[:, None] - np.linspace(0, 1, 4)) / 0.3) ** 2)
             for n in tissue.shape]
    coords = np.indices(tissue.shape, dtype=np.float32)
    for ax in range(3):
        coarse = rng.normal(0.0, 2.5 / spacing[ax], (4, 4, 4))
        coords[ax] += np.einsum("ia,jb,kc,abc->ijk", *bumps, coarse, optimize=True)
    return ndimage.map_coordinates(tissue, coords, order=0, mode="nearest")


def _scan(tissue: np.ndarray, rng) -> np.ndarray:
    """HU image (int16) of a tissue map: per-case tissue means, blur, then quantum noise."""
    lut = np.full(max(_CLASS_HU) + 1, AIR_HU, np.float32)
    for cls, (low, high) in _CLASS_HU.items():
        lut[cls] = rng.uniform(low, high)
    # About one voxel of partial-volume mixing (a 1-voxel box has sd 0.29) plus scanner blur.
    image = ndimage.gaussian_filter(lut[tissue], sigma=(0.6, 0.6, 0.5))
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(10, 20))
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16)


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    minimum = (MIN_IN_PLANE, MIN_IN_PLANE, MIN_SLICES)
    if len(shape) != 3 or not all(isinstance(n, (int, np.integer)) and n >= low
                                  for n, low in zip(shape, minimum)):
        raise ValueError(f"phantom shape must be 3 integers (x, y, slices) of at least {minimum}, "
                         f"got {tuple(shape)}")
    return tuple(int(n) for n in shape)


def generate_case(seed: int, shape: tuple[int, int, int] = (128, 128, 64)) -> PhantomCase:
    """One phantom case; the same seed always gives the same arrays, on any machine.

    `shape` is the stored array's shape. The field of view is 300-380 mm in-plane and 240-300 mm
    along the body (liver dome to below the kidneys), so the shape sets the spacing.
    """
    shape = _check_shape(shape)
    if seed < 0:
        raise ValueError(f"phantom seed must be >= 0, got {seed}")
    rng = np.random.default_rng(seed)
    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                           nib.orientations.axcodes2ornt(ORIENTATIONS[seed % 4]))
    ras_shape = tuple(shape[int(out_axis)] for out_axis in ornt[:, 0])
    fov_mm = rng.uniform(300.0, 380.0)
    pixel = fov_mm / min(ras_shape[:2])
    spacing = np.array([pixel, pixel, rng.uniform(240.0, 300.0) / ras_shape[2]])

    tissue = _warp(_draw_abdomen(ras_shape, spacing, fov_mm, rng), spacing, rng)
    image = _scan(tissue, rng)
    label = np.where(tissue < FAT, tissue, 0).astype(np.uint8)

    affine = np.diag([*spacing, 1.0])                      # RAS: voxel axes point R, A, S
    table_mm = rng.uniform([-20, -20, -600], [20, 20, -300])  # where the scanner put the centre
    affine[:3, 3] = table_mm - (np.array(ras_shape) - 1) / 2 * spacing
    image, label = (np.ascontiguousarray(nib.orientations.apply_orientation(a, ornt))
                    for a in (image, label))
    return PhantomCase(image, label, affine @ nib.orientations.inv_ornt_aff(ornt, ras_shape))


def _save(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)                          # 1 = scanner RAS, for both transforms
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)


def write_phantom_dataset(out_dir: str | Path, num_cases: int, seed: int = 0,
                          shape: tuple[int, int, int] = (128, 128, 64),
                          progress: Callable[[int, int], None] | None = None) -> dict:
    """Write `num_cases` phantom cases as an MSD-layout dataset (imagesTr/, labelsTr/,
    dataset.json) and return a summary. Case i uses seed `seed * 100003 + i`; `progress(done,
    total)` is called after each case."""
    if num_cases < 1:
        raise ValueError(f"phantom num_cases must be >= 1, got {num_cases}")
    if seed < 0:
        raise ValueError(f"phantom seed must be >= 0, got {seed}")
    shape = _check_shape(shape)
    start, out = time.perf_counter(), Path(out_dir)
    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    training = []
    for i in range(num_cases):
        case, name = generate_case(seed * 100003 + i, shape), f"phantom_{i:03d}.nii.gz"
        _save(case.image, case.affine, out / "imagesTr" / name)
        _save(case.label, case.affine, out / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        if progress is not None:
            progress(i + 1, num_cases)
    manifest = {
        "name": "SwinRay abdominal CT phantom",
        "description": "Synthetic portal-venous abdominal CT with BTCV's 13 organ labels, "
                       "generated by swinray.data.phantom; not real patient data.",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(value): name for value, name in enumerate(BTCV_LABELS)},
        "numTraining": num_cases,
        "numTest": 0,
        "training": training,
        "test": [],
    }
    dataset_file = out / "dataset.json"
    dataset_file.write_text(json.dumps(manifest, indent=2) + "\n")
    return {"out_dir": str(out), "num_cases": num_cases, "dataset_file": str(dataset_file),
            "seconds": round(time.perf_counter() - start, 3)}


def run_phantom(cfg, log=print) -> dict:
    """``python -m platform.phantom``: the dataset of a ``PhantomConfig``."""
    log(f"writing {cfg.num_cases} phantom CT case(s) of {cfg.shape} voxels to {cfg.out_dir}")
    return {"command": "phantom", **write_phantom_dataset(cfg.out_dir, cfg.num_cases, cfg.seed, cfg.shape)}
