"""Target profiles resolve from targets/*.toml and name registered backends."""

from pathlib import Path

import pytest

from edgekit.backends import backend_names
from edgekit.errors import UsageError
from edgekit.targets import resolve_target, target_names

TARGETS_DIR = Path(__file__).resolve().parent.parent / "targets"


@pytest.mark.parametrize("path", sorted(TARGETS_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_profile_resolves(path):
    target = resolve_target(path.stem)
    assert target.backend in backend_names()
    assert target.name == path.stem
    assert path.stem in target_names()


def test_bare_backend_is_a_target():
    for name in backend_names():
        assert resolve_target(name).backend == name


def test_profile_recipe_is_applied(tmp_path):
    from edgekit.recipe import Recipe

    target = resolve_target("onnxruntime-novnni")
    recipe = Recipe().updated(**target.recipe).validate()
    # the profile states the ISA, and leaves reduce_range for the backend to derive from it
    assert (target.isa, recipe.isa, recipe.reduce_range) == ("x86-avx2", "x86-avx2", None)
    assert Recipe().updated(**resolve_target("intel-cpu").recipe).isa == "x86-vnni"
    assert resolve_target("android-arm64").isa == "arm64"
    # a bare backend name and a profile without isa: the exporting machine's CPU decides
    assert resolve_target("onnxruntime").isa == resolve_target("openvino").isa == ""


def test_profile_isa_is_checked(tmp_path):
    from edgekit.cpu import ISAS

    bad = tmp_path / "bad.toml"
    bad.write_text('backend = "onnxruntime"\nisa = "x86-avx3"\n')
    with pytest.raises(UsageError, match="unknown isa 'x86-avx3'; choose one of x86-64") as err:
        resolve_target(str(bad))
    assert "\n" not in str(err.value)
    bad.write_text('backend = "onnxruntime"\nisa = 7\n')
    with pytest.raises(UsageError, match="'isa' must be a string"):
        resolve_target(str(bad))
    for path in sorted(TARGETS_DIR.glob("*.toml")):
        isa = resolve_target(path.stem).isa
        assert isa == "" or isa in ISAS


def test_unknown_target_lists_choices(tmp_path):
    with pytest.raises(UsageError, match="onnxruntime"):
        resolve_target("no-such-device")
    bad = tmp_path / "bad.toml"
    bad.write_text('backend = "onnxruntime"\nspeed = "fast"\n')
    with pytest.raises(UsageError, match="speed"):
        resolve_target(str(bad))


def test_profiles_ship_as_package_data():
    """The installed package (not the checkout fallback) carries every profile."""
    from importlib import resources

    shipped = {p.name for p in resources.files("edgekit.profiles").iterdir()}
    assert {p.name for p in TARGETS_DIR.glob("*.toml")} <= shipped


def test_edge_tpu_checks_follow_the_accelerator_field(tmp_path):
    """The Edge TPU report is asked for by the profile's ``accelerator``, not by its name: a
    copy of edgetpu.toml under another name still gets it, an 'edgetpu-like' name without the
    field (and an Edge TPU description) does not."""
    import keras
    import tensorflow as tf

    import edgekit

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    path = tmp_path / "tiny.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    profile = (TARGETS_DIR / "edgetpu.toml").read_text()
    assert 'accelerator = "edgetpu"' in profile
    coral = tmp_path / "coral-usb.toml"
    coral.write_text(profile.replace('name = "edgetpu"', 'name = "coral-usb"'))
    like = tmp_path / "edgetpu-like.toml"
    like.write_text('name = "edgetpu-like"\nbackend = "tflite"\ndescription = "like an Edge TPU"\n')
    assert resolve_target(str(coral)).accelerator == "edgetpu"
    assert resolve_target(str(like)).accelerator == ""

    def lines(target: Path) -> list[str]:
        return edgekit.describe(path, target=str(target))["target_report"]["lines"]

    assert any(ln.startswith("Edge TPU:") for ln in lines(coral))
    assert not any("Edge TPU" in ln for ln in lines(like))


def test_accelerator_must_be_a_string(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('backend = "tflite"\naccelerator = 1\n')
    with pytest.raises(UsageError, match="'accelerator' must be a string"):
        resolve_target(str(bad))
