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
    assert Recipe().updated(**target.recipe).reduce_range is True


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
