"""What one volume may cost (``data.limits``, and ``limits`` of evaluate and predict)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from swinray.config_checks import non_negative_finite, positive_finite, require


@dataclass(frozen=True)
class VolumeLimits:
    """What one volume may cost, checked from its header before anything is allocated: a header is
    only a claim, and nibabel allocates what it claims (a 64-byte file can claim 1 GiB). The first
    three bound any volume; the last two bound a case against the others it comes with
    (``swinray.data.admission``), which the absolute ones, sized for a whole-body CT, cannot."""
    max_megavoxels: float = 256.0       # voxels x channels a source may hold, and its resampling may
                                        # produce; 256 = a 512 x 512 x 1000 whole-body CT
    max_volume_mb: float = 1024.0       # bytes of voxel data a header may claim, as loaded (float32 when
                                        # scl_slope/scl_inter scale it); 1024 = 256 megavoxels of float32
    max_resample_growth: float = 27.0   # resampling to the task spacing may multiply the voxel count
                                        # by at most this (3x per axis) once the result passes 16
                                        # megavoxels: a 12 mm header is refused, not blown up 400x
    max_times_median: float = 16.0      # a case may cost (load and resample, from its headers) at most
                                        # this many times the median case of its dataset
    relative_floor_mb: float = 32.0     # ...but a case costing less than this is never refused for it

    def __post_init__(self) -> None:
        positive_finite(max_megavoxels=self.max_megavoxels, max_volume_mb=self.max_volume_mb)
        require(math.isfinite(self.max_resample_growth) and self.max_resample_growth >= 1, "max_resample_growth",
                 self.max_resample_growth, "must be a finite number, 1 or more")
        require(math.isfinite(self.max_times_median) and self.max_times_median >= 1, "max_times_median",
                 self.max_times_median, "must be a finite number, 1 or more (1e6 turns the check off)")
        non_negative_finite(relative_floor_mb=self.relative_floor_mb)
