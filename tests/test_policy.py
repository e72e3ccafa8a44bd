"""What a visitor may load: local folders only under the allowed roots (after symlinks), none on a
Space unless roots are set; the hub-model cap."""

import pytest

from components.policy import SourceRefused, check_source, local_roots, max_params


def test_anything_off_spaces_nothing_on_a_space_by_default(tmp_path):
    assert local_roots({}) is None
    check_source(str(tmp_path), {})
    assert local_roots({"SPACE_ID": "org/space"}) == []
    with pytest.raises(SourceRefused, match="cannot be loaded on this server"):
        check_source(str(tmp_path), {"SPACE_ID": "org/space"})
    check_source("default", {"SPACE_ID": "org/space"})
    check_source("HuggingFaceTB/SmolLM2-135M-Instruct", {"SPACE_ID": "org/space"})      # a hub id


def test_roots_are_checked_after_resolving_symlinks(tmp_path):
    allowed, secret = tmp_path / "models", tmp_path / "secret"
    (allowed / "tiny").mkdir(parents=True)
    secret.mkdir()
    (allowed / "escape").symlink_to(secret)
    env = {"PRUNING_STUDIO_LOCAL_ROOTS": f"{allowed}:/nonexistent"}
    check_source(str(allowed / "tiny"), env)
    with pytest.raises(SourceRefused, match="outside the folders"):
        check_source(str(allowed / "escape"), env)
    with pytest.raises(SourceRefused, match="outside the folders"):
        check_source(str(allowed / "tiny" / ".." / ".." / "secret"), env)


def test_max_params_in_billions():
    assert max_params({}) is None
    assert max_params({"PRUNING_STUDIO_MAX_PARAMS": "1.5"}) == 1.5e9
    with pytest.raises(SourceRefused):
        max_params({"PRUNING_STUDIO_MAX_PARAMS": "lots"})
