"""Tests for edgekit.calibration on real files: PNGs written with Pillow, arrays with numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.calibration import (
    DEFAULT_RANDOM_SAMPLES,
    ImageOptions,
    find_images,
    infer_layout,
    load_samples,
    split_samples,
)
from edgekit.errors import DataError, UsageError
from edgekit.model import TensorSpec

REPO = Path(__file__).resolve().parents[1]

# A 2x2 RGB image whose values are multiples of 51, so /255 gives exact tenths to check by hand.
RGB_2X2 = np.array(
    [
        [[255, 0, 51], [0, 102, 153]],
        [[204, 255, 0], [51, 153, 102]],
    ],
    dtype=np.uint8,
)
# The same image, scaled by 1/255, written out per channel (R, G, B) as rows x columns.
R = [[1.0, 0.0], [0.8, 0.2]]
G = [[0.0, 0.4], [1.0, 0.6]]
B = [[0.2, 0.6], [0.0, 0.4]]


def spec(shape: tuple[int | str, ...], dtype: str = "float32", name: str = "x") -> TensorSpec:
    return TensorSpec(name=name, dtype=dtype, shape=shape)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def rgb_dir(tmp_path: Path) -> Path:
    write_png(tmp_path / "imgs" / "a.png", RGB_2X2)
    return tmp_path / "imgs"


def gray_folder(root: Path, count: int) -> Path:
    """``count`` 2x2 gray images whose pixels all equal their index, so a sample names itself."""
    for i in range(count):
        write_png(root / f"img_{i:02d}.png", np.full((2, 2), i, dtype=np.uint8))
    return root


def ids(samples: list[dict[str, np.ndarray]]) -> list[int]:
    return [int(s["x"][0, 0, 0, 0]) for s in samples]


# --- layout ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "layout"),
    [
        ((1, 3, 224, 224), "NCHW"),
        ((1, 224, 224, 3), "NHWC"),
        ((1, 1, 8, 8), "NCHW"),
        ((1, 8, 8, 1), "NHWC"),
    ],
)
def test_infer_layout(shape, layout):
    assert infer_layout(shape) == layout


def test_infer_layout_ambiguous_asks_for_layout_flag():
    with pytest.raises(DataError, match="layout"):
        infer_layout((1, 5, 5, 5))
    with pytest.raises(DataError, match=r"rank 4.*\(1, 28, 28\)"):
        infer_layout((1, 28, 28))


# --- image pixels --------------------------------------------------------------------------


def test_rgb_nchw_default_scale(rgb_dir):
    (sample,) = load_samples(rgb_dir, [spec((1, 3, 2, 2))])
    x = sample["x"]
    assert x.dtype == np.float32 and x.shape == (1, 3, 2, 2)
    np.testing.assert_allclose(x[0], np.array([R, G, B]), atol=1e-6)


def test_nhwc_is_the_elementwise_transpose_of_nchw(rgb_dir):
    nchw = load_samples(rgb_dir, [spec((1, 3, 2, 2))])[0]["x"]
    nhwc = load_samples(rgb_dir, [spec((1, 2, 2, 3))])[0]["x"]
    assert nhwc.shape == (1, 2, 2, 3)
    for h in range(2):
        for w in range(2):
            for c in range(3):
                assert nhwc[0, h, w, c] == nchw[0, c, h, w]
    np.testing.assert_allclose(nhwc[0, 1, 0], [0.8, 1.0, 0.0], atol=1e-6)


def test_bgr_reverses_channels(rgb_dir):
    x = load_samples(rgb_dir, [spec((1, 3, 2, 2))], image_options=ImageOptions(color="bgr"))
    np.testing.assert_allclose(x[0]["x"][0], np.array([B, G, R]), atol=1e-6)


def test_mean_and_std_per_channel(rgb_dir):
    options = ImageOptions(mean=(0.2, 0.4, 0.6), std=(0.5, 0.25, 0.2))
    x = load_samples(rgb_dir, [spec((1, 3, 2, 2))], image_options=options)[0]["x"][0]
    # (value - mean) / std worked out by hand from R, G, B above.
    expected = [
        [[1.6, -0.4], [1.2, 0.0]],
        [[-1.6, 0.0], [2.4, 0.8]],
        [[-2.0, 0.0], [-3.0, -1.0]],
    ]
    np.testing.assert_allclose(x, expected, atol=1e-5)


def test_scale_one_keeps_raw_pixels_and_flags_accept_strings(rgb_dir):
    x = load_samples(rgb_dir, [spec((1, 2, 2, 3))], image_options=ImageOptions(scale=1.0))
    np.testing.assert_array_equal(x[0]["x"][0], RGB_2X2.astype(np.float32))
    options = ImageOptions(scale="2/255", mean="0.5", std="0.5,1,2")
    assert options.scale == pytest.approx(2 / 255)
    assert options.mean == (0.5,) and options.std == (0.5, 1.0, 2.0)


def test_gray_input_from_rgb_file_uses_luma(tmp_path):
    # For pixels with R == G == B, Pillow's luma conversion returns that value exactly.
    pixels = np.repeat(np.array([[0, 51], [204, 255]], dtype=np.uint8)[:, :, None], 3, axis=2)
    write_png(tmp_path / "g.png", pixels)
    x = load_samples(tmp_path, [spec((1, 1, 2, 2))])[0]["x"]
    np.testing.assert_allclose(x, [[[[0.0, 0.2], [0.8, 1.0]]]], atol=1e-6)


def test_nearest_upscale_replicates_blocks(tmp_path):
    gray = np.array([[10, 20], [30, 40]], dtype=np.uint8)
    write_png(tmp_path / "g.png", gray)
    options = ImageOptions(resize="nearest", scale=1.0)
    x = load_samples(tmp_path, [spec((1, 1, 4, 4))], image_options=options)[0]["x"]
    np.testing.assert_array_equal(x[0, 0], np.repeat(np.repeat(gray, 2, 0), 2, 1))


def test_bilinear_resize_of_flat_image_stays_flat(tmp_path):
    write_png(tmp_path / "flat.png", np.full((7, 5, 3), 102, dtype=np.uint8))
    x = load_samples(tmp_path, [spec((1, 3, 3, 4))])[0]["x"]
    assert x.shape == (1, 3, 3, 4)
    np.testing.assert_allclose(x, 0.4, atol=1e-6)


def test_uint8_input_gets_raw_pixels_and_int8_is_shifted(rgb_dir):
    u8 = load_samples(rgb_dir, [spec((1, 2, 2, 3), "uint8")])[0]["x"]
    assert u8.dtype == np.uint8
    np.testing.assert_array_equal(u8[0], RGB_2X2)
    i8 = load_samples(rgb_dir, [spec((1, 2, 2, 3), "int8")])[0]["x"]
    assert i8.dtype == np.int8
    np.testing.assert_array_equal(i8[0], RGB_2X2.astype(np.int16) - 128)


def test_float16_input(rgb_dir):
    x = load_samples(rgb_dir, [spec((1, 3, 2, 2), "float16")])[0]["x"]
    assert x.dtype == np.float16
    np.testing.assert_allclose(x[0].astype(np.float32), np.array([R, G, B]), atol=1e-3)


# --- preprocess.toml -----------------------------------------------------------------------


def test_preprocess_toml_applies_and_flags_override_it(rgb_dir):
    (rgb_dir / "preprocess.toml").write_text(
        'color = "bgr"\nscale = 1.0\nmean = [0, 0, 51]\nstd = 2\nlayout = "NHWC"\n'
    )
    inputs = [spec((1, 2, 2, 3))]
    x = load_samples(rgb_dir, inputs)[0]["x"][0]
    bgr = RGB_2X2[:, :, ::-1].astype(np.float64)
    np.testing.assert_allclose(x, (bgr - [0, 0, 51]) / 2, atol=1e-5)

    flags = ImageOptions(color="rgb", scale=1 / 255)  # mean/std still come from the TOML
    y = load_samples(rgb_dir, inputs, image_options=flags)[0]["x"][0]
    expected = (RGB_2X2.astype(np.float64) / 255 - [0, 0, 51]) / 2
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_preprocess_toml_fraction_string_and_resize(tmp_path):
    write_png(tmp_path / "g.png", np.array([[10, 20], [30, 40]], dtype=np.uint8))
    (tmp_path / "preprocess.toml").write_text('scale = "1/10"\nresize = "nearest"\n')
    x = load_samples(tmp_path, [spec((1, 1, 4, 4))])[0]["x"][0, 0]
    np.testing.assert_allclose(x[::2, ::2], [[1, 2], [3, 4]], atol=1e-6)


def test_preprocess_toml_unknown_key(rgb_dir):
    (rgb_dir / "preprocess.toml").write_text("scale = 1.0\nnormalise = true\n")
    with pytest.raises(DataError, match="unknown key 'normalise'"):
        load_samples(rgb_dir, [spec((1, 3, 2, 2))])


def test_preprocess_toml_bad_value_and_bad_syntax(rgb_dir):
    toml = rgb_dir / "preprocess.toml"
    toml.write_text('color = "cmyk"\n')
    with pytest.raises(DataError, match=r"preprocess.toml: bad color = 'cmyk'.*rgb, bgr or gray"):
        load_samples(rgb_dir, [spec((1, 3, 2, 2))])
    toml.write_text("scale = \n")
    with pytest.raises(DataError, match="not valid TOML"):
        load_samples(rgb_dir, [spec((1, 3, 2, 2))])


@pytest.mark.parametrize(
    ("field", "value"),
    [("layout", "CHW"), ("color", "rgba"), ("scale", 0), ("std", (1.0, 0.0)), ("resize", "box")],
)
def test_bad_image_option_is_usage_error_naming_the_flag(field, value):
    with pytest.raises(UsageError, match=f"{field}"):
        ImageOptions(**{field: value})


# --- image folder errors -------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match=r"calibration data not found: .*nope"):
        load_samples(tmp_path / "nope", [spec((1, 3, 2, 2))])


def test_empty_folder_and_folder_without_images(tmp_path):
    with pytest.raises(DataError, match="no images found"):
        load_samples(tmp_path, [spec((1, 3, 2, 2))])
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "data.npy").write_bytes(b"")
    with pytest.raises(DataError, match="no images found"):
        load_samples(tmp_path, [spec((1, 3, 2, 2))])


def test_corrupt_image_names_the_file(rgb_dir):
    (rgb_dir / "sub").mkdir()
    (rgb_dir / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match=r"cannot read image .*sub/broken\.jpg"):
        load_samples(rgb_dir, [spec((1, 3, 2, 2))])


def test_sixteen_bit_image_is_refused_not_clipped(tmp_path):
    Image.fromarray(np.array([[0, 1000], [2000, 65535]], dtype=np.uint16)).save(tmp_path / "d.png")
    with pytest.raises(DataError, match=r"d\.png.*not 8-bit"):
        load_samples(tmp_path, [spec((1, 1, 2, 2))])


def test_hidden_files_are_skipped_and_order_is_sorted(tmp_path):
    write_png(tmp_path / "b" / "2.png", np.full((2, 2), 2, dtype=np.uint8))
    write_png(tmp_path / "a.PNG", np.full((2, 2), 1, dtype=np.uint8))
    write_png(tmp_path / "c.bmp", np.full((2, 2), 3, dtype=np.uint8))
    (tmp_path / "._a.png").write_bytes(b"AppleDouble junk")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "x.png").write_bytes(b"junk")
    assert [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)] == [
        "a.PNG",
        "b/2.png",
        "c.bmp",
    ]
    samples = load_samples(tmp_path, [spec((1, 1, 2, 2))], image_options=ImageOptions(scale=1))
    assert ids(samples) == [1, 2, 3]


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        ([spec((2, 3, 2, 2))], "batch size 2.*input_shapes x=1x3x2x2"),
        ([spec((1, 3, 2, 2)), spec((1, 4), name="m")], "inputs x, m.*npz"),
        ([spec((1, 12))], r"\(1, 12\), not an image"),
        ([spec((1, 3, 2, 2), "int32")], "int32.*float, uint8 or int8"),
        ([spec(("N", 3, 2, 2))], "dynamic shape.*input_shapes x=Nx3x2x2"),
    ],
)
def test_image_folder_model_mismatch(rgb_dir, inputs, match):
    with pytest.raises((DataError, UsageError), match=match):
        load_samples(rgb_dir, inputs)


def test_color_layout_and_mean_must_fit_channels(rgb_dir):
    with pytest.raises(DataError, match=r"\(1, 4, 2, 2\) read as NCHW has 4 channels"):
        load_samples(rgb_dir, [spec((1, 4, 2, 2))], image_options=ImageOptions(layout="nchw"))
    with pytest.raises(DataError, match=r"color 'gray' gives 1 channel.*color rgb or bgr"):
        load_samples(rgb_dir, [spec((1, 3, 2, 2))], image_options=ImageOptions(color="gray"))
    with pytest.raises(DataError, match=r"mean has 2 values.*3 channel"):
        load_samples(rgb_dir, [spec((1, 3, 2, 2))], image_options=ImageOptions(mean=(0.1, 0.2)))


# --- sampling ------------------------------------------------------------------------------


def test_folder_sampling_is_seeded_and_sorted(tmp_path):
    folder = gray_folder(tmp_path, 10)
    inputs = [spec((1, 1, 2, 2))]
    raw = ImageOptions(scale=1.0)
    everything = load_samples(folder, inputs, image_options=raw)
    assert ids(everything) == list(range(10))

    picked = ids(load_samples(folder, inputs, image_options=raw, limit=4, seed=7))
    reference = sorted(np.random.default_rng(7).choice(10, 4, replace=False).tolist())
    assert picked == reference
    assert ids(load_samples(folder, inputs, image_options=raw, limit=4, seed=7)) == picked
    other = ids(load_samples(folder, inputs, image_options=raw, limit=4, seed=8))
    assert other != picked and other == sorted(other)
    assert ids(load_samples(folder, inputs, image_options=raw, limit=50)) == list(range(10))


def test_folder_sampling_decodes_only_the_chosen_images(tmp_path):
    folder = gray_folder(tmp_path, 10)
    chosen = sorted(np.random.default_rng(0).choice(10, 3, replace=False).tolist())
    victim = next(i for i in range(10) if i not in chosen)
    (folder / f"img_{victim:02d}.png").write_bytes(b"corrupt")
    raw = ImageOptions(scale=1.0)
    assert ids(load_samples(folder, [spec((1, 1, 2, 2))], image_options=raw, limit=3)) == chosen
    with pytest.raises(DataError, match=f"img_{victim:02d}.png"):
        load_samples(folder, [spec((1, 1, 2, 2))], image_options=raw)


@pytest.mark.parametrize("limit", [0, -1, 2.5, True])
def test_bad_limit(rgb_dir, limit):
    with pytest.raises(UsageError, match="calibration_samples"):
        load_samples(rgb_dir, [spec((1, 3, 2, 2))], limit=limit)


def test_split_samples_is_disjoint_and_deterministic():
    items = list(range(20))
    calib, evaluation = split_samples(items, 8, 5, seed=3)
    order = np.random.default_rng(3).permutation(20).tolist()
    assert calib == sorted(order[:8]) and evaluation == sorted(order[8:13])
    assert not set(calib) & set(evaluation)
    assert split_samples(items, 8, 5, seed=3) == (calib, evaluation)
    assert split_samples(items, 8, 5, seed=4) != (calib, evaluation)


def test_split_samples_with_too_few_serves_calibration_first():
    calib, evaluation = split_samples(list("abcde"), 3, 10)
    assert len(calib) == 3 and sorted(calib + evaluation) == list("abcde")
    calib, evaluation = split_samples(list("abc"), 5, 2)
    assert calib == list("abc") and evaluation == []
    with pytest.raises(UsageError):
        split_samples([1, 2], -1, 1)


# --- .npy / .npz ---------------------------------------------------------------------------


def test_npy_single_sample_and_stack(tmp_path):
    one = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    np.save(tmp_path / "one.npy", one)
    (s,) = load_samples(tmp_path / "one.npy", [spec((1, 2, 3))])
    np.testing.assert_array_equal(s["x"], one)

    stack = np.arange(5 * 6, dtype=np.float64).reshape(5, 2, 3)
    np.save(tmp_path / "stack.npy", stack)
    samples = load_samples(tmp_path / "stack.npy", [spec((1, 2, 3))])
    assert len(samples) == 5
    for i, sample in enumerate(samples):
        assert sample["x"].dtype == np.float32 and sample["x"].shape == (1, 2, 3)
        np.testing.assert_array_equal(sample["x"][0], stack[i])

    picked = load_samples(tmp_path / "stack.npy", [spec((1, 2, 3))], limit=2, seed=1)
    rows = sorted(np.random.default_rng(1).choice(5, 2, replace=False).tolist())
    for sample, row in zip(picked, rows, strict=True):
        np.testing.assert_array_equal(sample["x"][0], stack[row])


def test_npy_whole_batch_for_batch_two_model(tmp_path):
    batch = np.ones((2, 3), dtype=np.float32)
    np.save(tmp_path / "b.npy", batch)
    (s,) = load_samples(tmp_path / "b.npy", [spec((2, 3))])
    np.testing.assert_array_equal(s["x"], batch)
    np.save(tmp_path / "b4.npy", np.ones((4, 3), dtype=np.float32))
    with pytest.raises(
        DataError,
        match=r"shape \(4, 3\).*expects \(2, 3\).*\(2, 3\) \(one sample\), \(N, 2, 3\) \(N samp",
    ):
        load_samples(tmp_path / "b4.npy", [spec((2, 3))])


def test_leading_sample_axis_for_any_input(tmp_path):
    """An RNN state [2, 1, 128] and a scalar take N samples from (N, *shape), like images."""
    state = np.random.default_rng(0).standard_normal((5, 2, 1, 8)).astype(np.float32)
    steps = np.arange(5, dtype=np.int64)
    np.savez(tmp_path / "rnn.npz", h=state, t=steps)
    inputs = [spec((2, 1, 8), name="h"), spec((), "int64", name="t")]
    got = load_samples(tmp_path / "rnn.npz", inputs)
    assert len(got) == 5
    for i, feed in enumerate(got):
        np.testing.assert_array_equal(feed["h"], state[i])
        assert feed["t"].shape == () and int(feed["t"]) == i


def test_npy_bad_shape_lists_both_layouts(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((4, 28, 28), dtype=np.float32))
    with pytest.raises(DataError) as err:
        load_samples(tmp_path / "bad.npy", [spec((1, 1, 28, 28))])
    message = str(err.value)
    assert "(4, 28, 28)" in message and "(1, 1, 28, 28)" in message
    assert "(N, 1, 28, 28)" in message and "bad.npy" in message


def test_npy_for_multi_input_model_points_to_npz(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((1, 2), dtype=np.float32))
    inputs = [spec((1, 2)), spec((1, 2), name="y")]
    with pytest.raises(DataError, match=r"\.npz keyed by input name"):
        load_samples(tmp_path / "a.npy", inputs)


def test_npz_keyed_by_name_ignores_extra_keys(tmp_path):
    x = np.arange(3 * 4, dtype=np.float32).reshape(3, 4)
    ids_ = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.int64)
    np.savez(tmp_path / "d.npz", x=x, ids=ids_, labels=np.array([0, 1, 2]))
    inputs = [spec((1, 4)), spec((1, 2), "int32", name="ids")]
    samples = load_samples(tmp_path / "d.npz", inputs)
    assert len(samples) == 3
    for i, sample in enumerate(samples):
        assert set(sample) == {"x", "ids"}
        assert sample["ids"].dtype == np.int32
        np.testing.assert_array_equal(sample["x"][0], x[i])
        np.testing.assert_array_equal(sample["ids"][0], ids_[i])


def test_npz_missing_key_lists_expected_names(tmp_path):
    np.savez(tmp_path / "d.npz", input=np.zeros((1, 4), dtype=np.float32))
    with pytest.raises(DataError, match=r"no data for input\(s\) x.*keys input.*inputs are x, y"):
        load_samples(tmp_path / "d.npz", [spec((1, 4)), spec((1, 4), name="y")])


def test_npz_inputs_with_different_counts(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 4)), y=np.zeros((2, 4)))
    with pytest.raises(DataError, match="x: 3, y: 2"):
        load_samples(tmp_path / "d.npz", [spec((1, 4)), spec((1, 4), name="y")])


def test_unsafe_casts_are_refused(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(DataError, match=r"float32 but the model expects int8.*truncate"):
        load_samples(tmp_path / "f.npy", [spec((1, 4), "int8")])
    np.save(tmp_path / "big.npy", np.array([[0, 1, 2, 300]], dtype=np.int64))
    with pytest.raises(DataError, match=r"values 0\.\.300 .*int8"):
        load_samples(tmp_path / "big.npy", [spec((1, 4), "int8")])
    np.save(tmp_path / "huge.npy", np.array([[1e300, 0, 0, 0]]))
    with pytest.raises(DataError, match=r"beyond the range.*float32"):
        load_samples(tmp_path / "huge.npy", [spec((1, 4))])


@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.bool_])
def test_integer_or_bool_data_for_a_float_input_is_refused(tmp_path, dtype):
    """Unscaled pixels or labels would calibrate on the wrong range without a word."""
    np.save(tmp_path / "i.npy", np.ones((2, 4), dtype=dtype))
    with pytest.raises(DataError, match=r"but the model expects float32; convert it"):
        load_samples(tmp_path / "i.npy", [spec((1, 4))])


def test_nan_is_refused_with_sample_index(tmp_path):
    data = np.zeros((4, 3), dtype=np.float32)
    data[2, 1] = np.nan
    np.save(tmp_path / "n.npy", data)
    with pytest.raises(DataError, match=r"calibration sample 2 \(n\.npy\): input 'x' contains NaN"):
        load_samples(tmp_path / "n.npy", [spec((1, 3))])


def test_unreadable_and_unsupported_files(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"cannot read .*obj\.npy"):
        load_samples(tmp_path / "obj.npy", [spec((1,))])
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"cannot read .*junk\.npz"):
        load_samples(tmp_path / "junk.npz", [spec((1,))])
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=r"unsupported file type '\.csv'"):
        load_samples(tmp_path / "data.csv", [spec((1, 2))])


def test_image_options_refused_for_arrays(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((1, 2), dtype=np.float32))
    with pytest.raises(UsageError, match=r"\(mean\) apply only to image folders"):
        load_samples(tmp_path / "a.npy", [spec((1, 2))], image_options=ImageOptions(mean=(0.5,)))
    # Unset options are not "given": the CLI may always pass an ImageOptions.
    assert len(load_samples(tmp_path / "a.npy", [spec((1, 2))], image_options=ImageOptions())) == 1


def test_in_memory_array_and_mapping():
    stack = np.arange(8, dtype=np.float32).reshape(4, 2)
    assert len(load_samples(stack, [spec((1, 2))])) == 4
    samples = load_samples({"x": stack, "y": stack * 2}, [spec((1, 2)), spec((1, 2), name="y")])
    np.testing.assert_array_equal(samples[3]["y"], [[12.0, 14.0]])


# --- iterables -----------------------------------------------------------------------------


def test_list_generator_and_reader_give_the_same_samples():
    arrays = [np.full((1, 2), i, dtype=np.float64) for i in range(5)]
    inputs = [spec((1, 2))]
    from_list = load_samples([{"x": a} for a in arrays], inputs)
    from_gen = load_samples(({"x": a} for a in arrays), inputs)

    class Reader:  # the shape of onnxruntime.quantization.CalibrationDataReader
        def __init__(self) -> None:
            self.items = iter([{"x": a} for a in arrays])

        def get_next(self):
            return next(self.items, None)

    from_reader = load_samples(Reader(), inputs)
    for samples in (from_list, from_gen, from_reader):
        assert [float(s["x"][0, 0]) for s in samples] == [0, 1, 2, 3, 4]
        assert all(s["x"].dtype == np.float32 for s in samples)
    picked = load_samples(({"x": a} for a in arrays), inputs, limit=2, seed=5)
    reference = sorted(np.random.default_rng(5).choice(5, 2, replace=False).tolist())
    assert [float(s["x"][0, 0]) for s in picked] == reference


def test_iterable_shape_mismatch_message():
    good = {"x": np.zeros((1, 1, 28, 28), dtype=np.float32)}
    bad = {"x": np.zeros((1, 28, 28), dtype=np.float32)}
    with pytest.raises(DataError) as err:
        load_samples([good, good, good, bad], [spec((1, 1, 28, 28))])
    assert str(err.value).startswith(
        "calibration sample 3: input 'x' has shape (1, 28, 28) but the model expects (1, 1, 28, 28)"
    )


def test_iterable_missing_input_wrong_item_and_empty():
    inputs = [spec((1, 2)), spec((1, 2), name="mask")]
    with pytest.raises(DataError, match=r"calibration sample 0 has no data for input.*mask"):
        load_samples([{"x": np.zeros((1, 2))}], inputs)
    with pytest.raises(DataError, match="calibration sample 0 is a tuple, not a dict"):
        load_samples([(np.zeros((1, 2)), np.zeros((1, 2)))], inputs)
    with pytest.raises(DataError, match="yielded no samples"):
        load_samples(iter([]), inputs)
    with pytest.raises(DataError, match="cannot read calibration data from a int"):
        load_samples(42, inputs)


# --- random --------------------------------------------------------------------------------


def test_random_samples_are_seeded_and_typed():
    inputs = [spec((1, 3, 4, 4)), spec((1, 5), "int8", name="ids")]
    samples = load_samples("random", inputs)
    assert len(samples) == DEFAULT_RANDOM_SAMPLES
    for s in samples:
        assert s["x"].dtype == np.float32 and s["x"].shape == (1, 3, 4, 4)
        assert s["ids"].dtype == np.int8 and s["ids"].shape == (1, 5)
    again = load_samples("random", inputs, limit=3, seed=0)
    for a, b in zip(samples[:3], again, strict=True):
        np.testing.assert_array_equal(a["x"], b["x"])
    other = load_samples("random", inputs, limit=3, seed=1)
    assert not np.array_equal(other[0]["x"], again[0]["x"])
    ints = np.concatenate([s["ids"].ravel() for s in samples])
    assert ints.min() < -64 and ints.max() > 63  # spread over the int8 range, not near zero
    floats = np.concatenate([s["x"].ravel() for s in samples])
    assert abs(floats.mean()) < 0.15 and 0.85 < floats.std() < 1.15


@pytest.mark.parametrize(
    "bad", [spec((1, 5), "int64", name="ids"), spec((2,), "bool", name="mask"), spec((), name="t")]
)
def test_random_values_are_refused_for_ids_flags_and_scalars(bad):
    with pytest.raises(DataError, match=rf"input '{bad.name}' is .*eval_data"):
        load_samples("random", [spec((1, 3, 4, 4)), bad])


# --- the shipped sample set ----------------------------------------------------------------


def test_shipped_digits_match_sklearn():
    datasets = pytest.importorskip("sklearn.datasets")
    folder = REPO / "calibration_data" / "digits"
    names = sorted(p.name for p in folder.glob("*.png"))
    assert 50 <= len(names) <= 200
    assert sum(p.stat().st_size for p in folder.parent.rglob("*") if p.is_file()) < 100_000

    samples = load_samples(folder, [spec((1, 1, 8, 8))])
    assert len(samples) == len(names)
    digits = datasets.load_digits()
    for position in (0, len(names) // 2, len(names) - 1):
        index, label = (int(part) for part in names[position].removesuffix(".png").split("_"))
        assert digits.target[index] == label
        x = samples[position]["x"][0, 0]
        # 0..16 was stored as round(v * 255 / 16), so v / 16 holds to half a grey level.
        np.testing.assert_allclose(x, digits.images[index] / 16, atol=0.5 / 255 + 1e-7)
        stored = (digits.images[index].astype(np.int64) * 255 + 8) // 16
        np.testing.assert_allclose(x, stored / 255, atol=1e-7)
