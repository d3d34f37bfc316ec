"""Reading volumes we can trust: every kind of broken file is caught and named, none slips by."""
import gzip

import nibabel as nib
import numpy as np
import pytest

from conftest import patched_header
from swinray.data.nifti import CaseError, check_channels, check_label, ras_spacing, read_verified


def save(path, array, affine=None):
    nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.5, 3.0, 1.0]) if affine is None else affine), path)
    return path


@pytest.fixture
def volume(tmp_path):
    rng = np.random.default_rng(0)
    return save(tmp_path / "ct.nii.gz", rng.integers(-1000, 1000, (24, 20, 12)).astype(np.int16))


def test_a_good_file_reads_back_exactly(volume):
    v = read_verified(volume)
    assert np.array_equal(v.array, np.asanyarray(nib.load(volume).dataobj))
    assert v.affine[2, 2] == 3.0 and len(v.sha256) == 64


def test_missing_file(tmp_path):
    with pytest.raises(CaseError, match=r"nowhere\.nii\.gz: file not found"):
        read_verified(tmp_path / "nowhere.nii.gz")


def test_truncated_gzip_is_caught_even_though_nibabel_loads_it(volume):
    raw = volume.read_bytes()
    volume.write_bytes(raw[: len(raw) // 2])
    nib.load(volume)  # nibabel opens it happily; only reading the voxels would fail
    with pytest.raises(CaseError, match=r"ct\.nii\.gz: corrupt or truncated gzip stream"):
        read_verified(volume)


def test_cut_gzip_trailer_is_caught(volume):
    volume.write_bytes(volume.read_bytes()[:-8])
    with pytest.raises(CaseError, match="corrupt or truncated gzip stream"):
        read_verified(volume)


def test_flipped_bits_are_caught_by_the_crc(tmp_path):
    path = tmp_path / "flip.nii.gz"
    # A stored (uncompressed) deflate block: a flipped bit changes voxels, not the stream structure.
    data = nib.Nifti1Image(np.zeros((16, 16, 8), np.int16), np.eye(4)).to_bytes()
    raw = bytearray(gzip.compress(data, compresslevel=0))
    raw[len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(CaseError, match="corrupt or truncated gzip stream.*CRC"):
        read_verified(path)


def test_garbage_is_not_a_nifti(tmp_path):
    path = tmp_path / "junk.nii"
    path.write_bytes(b"not a nifti file at all" * 20)
    with pytest.raises(CaseError, match=r"junk\.nii: not a readable NIfTI-1 volume"):
        read_verified(path)


def test_non_finite_voxels(tmp_path):
    array = np.zeros((8, 8, 8), np.float32)
    array[1, 2, 3], array[4, 4, 4] = np.nan, np.inf
    with pytest.raises(CaseError, match="2 non-finite voxel"):
        read_verified(save(tmp_path / "nan.nii.gz", array))


def test_degenerate_affine(tmp_path):
    path = patched_header(tmp_path / "flat.nii.gz", "srow_z", [0.0, 0.0, 0.0, 0.0])
    with pytest.raises(CaseError, match=r"flat\.nii\.gz: degenerate affine"):
        read_verified(path)


def test_zero_size_volume(tmp_path):
    path = patched_header(tmp_path / "empty.nii.gz", "dim", [3, 8, 0, 8, 1, 1, 1, 1])
    with pytest.raises(CaseError, match=r"empty\.nii\.gz: zero-size volume \(8, 0, 8\)"):
        read_verified(path)


def test_channels_are_moved_first_and_counted(tmp_path):
    four_d = read_verified(save(tmp_path / "mp.nii.gz", np.zeros((8, 8, 8, 2), np.float32)))
    assert check_channels(four_d, "mp.nii.gz", 2).shape == (2, 8, 8, 8)
    with pytest.raises(CaseError, match="mp.nii.gz: 2 channel.*expects 1 .*3-D"):
        check_channels(four_d, "mp.nii.gz", 1)
    three_d = read_verified(save(tmp_path / "one.nii.gz", np.zeros((8, 8, 8), np.float32)))
    with pytest.raises(CaseError, match="1 channel.*expects 4 .*4-D with 4 channels"):
        check_channels(three_d, "one.nii.gz", 4)


def label_case(tmp_path, label, label_affine=None):
    image = read_verified(save(tmp_path / "img.nii.gz", np.zeros((8, 8, 8), np.int16)))
    lab = read_verified(save(tmp_path / "lab.nii.gz", label, label_affine))
    return lab, image


def test_label_checks(tmp_path):
    ok = np.zeros((8, 8, 8), np.uint8)
    ok[2:4, 2:4, 2:4] = 2
    lab, image = label_case(tmp_path, ok)
    assert check_label(lab, "lab.nii.gz", image, "img.nii.gz", 3).dtype == np.uint8
    with pytest.raises(CaseError, match=r"lab\.nii\.gz: label values \[2\] are not in the task's label set 0\.\.1"):
        check_label(lab, "lab.nii.gz", image, "img.nii.gz", 2)
    lab, image = label_case(tmp_path, np.zeros((8, 8, 7), np.uint8))
    with pytest.raises(CaseError, match=r"label shape \(8, 8, 7\) differs from image img\.nii\.gz shape \(8, 8, 8\)"):
        check_label(lab, "lab.nii.gz", image, "img.nii.gz", 2)
    lab, image = label_case(tmp_path, ok, np.diag([1.5, 1.5, 2.0, 1.0]))
    with pytest.raises(CaseError, match="label affine differs from image img.nii.gz"):
        check_label(lab, "lab.nii.gz", image, "img.nii.gz", 3)


def test_ras_spacing_follows_the_axes_not_the_storage_order():
    affine = np.array([[0, 0, -3.0, 0], [-0.8, 0, 0, 0], [0, 1.2, 0, 0], [0, 0, 0, 1]])
    assert ras_spacing(affine) == [3.0, 0.8, 1.2]


def scaled_ct(path, shape=(24, 20, 12)):
    """HU stored as scanners often do: uint16 of HU + 1024, with scl_inter = -1024 (nibabel loads float64)."""
    hu = np.full(shape, -1000, np.int16)
    hu[4:-4, 4:-4, 2:-2] = np.arange(np.prod(np.array(shape) - [8, 8, 4])).reshape(np.array(shape) - [8, 8, 4]) % 2000
    image = nib.Nifti1Image((hu + 1024).astype(np.uint16), np.diag([1.5, 1.5, 3.0, 1.0]))
    image.header.set_slope_inter(1.0, -1024.0)
    nib.save(image, path)
    return path, hu


def test_scaled_voxels_load_as_float32_with_their_values(tmp_path):
    path, hu = scaled_ct(tmp_path / "stored_plus_1024.nii.gz")
    v = read_verified(path)
    assert v.array.dtype == np.float32 and np.array_equal(v.array, hu)
    assert np.asanyarray(nib.load(path).dataobj).dtype == np.float64          # what nibabel alone gives
    stored = np.arange(24 * 20 * 12, dtype=np.int16).reshape(24, 20, 12)
    image = nib.Nifti1Image(stored, np.eye(4))
    image.header.set_slope_inter(0.25, 3.0)
    nib.save(image, tmp_path / "slope.nii.gz")
    assert np.array_equal(read_verified(tmp_path / "slope.nii.gz").array, stored * np.float32(0.25) + 3)


def test_scaled_voxels_cost_one_float32_array_not_a_float64_one(tmp_path):
    """Read: the file, its decompressed bytes, the stored voxels and one float32 array; nibabel's
    float64 scaling would add 4 bytes a voxel more (12 for uint16 voxels, not 8, besides the file)."""
    import tracemalloc
    path, _ = scaled_ct(tmp_path / "big.nii.gz", (128, 128, 128))
    voxels, on_disk = 128 ** 3, path.stat().st_size
    tracemalloc.start()
    try:
        read_verified(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < on_disk + 1.1 * voxels * (2 + 2 + 4)


def test_a_scaled_header_is_sized_as_loaded(tmp_path):
    """200 x 200 x 100 uint16 is 7.6 MB as stored, 15.3 MB as the float32 its scaling loads into."""
    from swinray.config import VolumeLimits
    from swinray.data.nifti import read_header
    header = nib.Nifti1Header()
    header.set_data_shape((200, 200, 100))
    header.set_data_dtype(np.uint16)
    header.set_sform(np.diag([1.5, 1.5, 2.0, 1.0]), code=1)
    limits = VolumeLimits(max_volume_mb=12)
    plain = tmp_path / "plain.nii"
    plain.write_bytes(header.binaryblock + b"\0" * 4)
    read_header(plain, limits)
    header.set_slope_inter(1.0, -1024.0)
    scaled = tmp_path / "scaled.nii"
    scaled.write_bytes(header.binaryblock + b"\0" * 4)
    with pytest.raises(CaseError) as caught:
        read_header(scaled, limits)
    assert "scaled.nii: its header claims 15.3 MB of voxel data as loaded (float32, scaled by its " \
           "scl_slope/scl_inter from uint16), above the limit max_volume_mb=12" in str(caught.value)
