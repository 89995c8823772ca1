"""The one typed path of a run's settings: Overrides -> Request (saved) and Placement (not)."""

import json
from dataclasses import fields
from pathlib import Path

import pytest

from ipo_cli.errors import IpoError
from ipo_cli.optimize.request import LIMITS, Overrides, Placement, Request, make_request, saved_settings


def test_overrides_name_every_request_setting_and_nothing_else():
    assert [f.name for f in fields(Overrides)] == [f.name for f in fields(Request)]
    assert all(f.default is None for f in fields(Overrides))


def test_paths_stay_paths_until_config_json():
    request = make_request(Overrides(images=Path("imgs"), classes=Path("c.txt")), None,
                           {"split": "s.json", "steps": 2})
    assert request.images == Path("imgs") and request.classes == Path("c.txt") and request.split == Path("s.json")
    written = json.loads(json.dumps(request.settings()))  # what config.json holds
    assert (written["images"], written["split"], written["mmproj"]) == ("imgs", "s.json", None)
    assert make_request(Overrides(), None, written) == request  # a resume reads back the same request


def test_an_old_runs_saved_paths_compare_equal_to_themselves():
    """Runs saved paths as typed ("imgs/"); read back as Paths they are written "imgs"."""
    saved = {**make_request(Overrides(images=Path("imgs"))).settings(), "images": "imgs/", "clip_weights": "w.pt"}
    assert saved_settings(saved) == make_request(Overrides(), None, saved).settings()


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_each_setting_has_one_range(name):
    flag, low, high = LIMITS[name]
    make_request(Overrides(images=Path("x"), **{name: low}))
    make_request(Overrides(images=Path("x"), **{name: high}))
    step = 1 if isinstance(low, int) else 0.5
    for bad in (low - step, high + step, float("nan")):
        with pytest.raises(IpoError, match=f"^{flag} must be a number from {low} to {high}"):
            make_request(Overrides(images=Path("x"), **{name: bad}))


def test_placement_is_not_part_of_the_saved_settings():
    assert not {f.name for f in fields(Placement)} & set(Request(images=Path("x")).settings())
    with pytest.raises(IpoError, match="--parallel must be at least 1"):
        Placement(parallel=0).check()


def test_gpu_layers_with_every_model_on_a_server_is_a_stated_no_op():
    from ipo_cli.optimize.plan import NO_OFFLOAD_NOTE, model_plan

    remote = Request(images=Path("x"), llm_url="http://h/v1", lmm="none")
    plan = model_plan(remote, use_lmm=False, gpu_layers=7)
    assert plan["gpu_layers_note"] == NO_OFFLOAD_NOTE and "gpu_layers" not in plan
    assert "gpu_layers_note" not in model_plan(remote, use_lmm=False, gpu_layers=None)


def test_a_run_saved_before_a_setting_existed_still_resumes():
    """A run started by an ipo without `hide_below` or `fresh_sample` did what their
    defaults do; its config.json lacks them, and it must still compare equal."""
    now = make_request(Overrides(images=Path("imgs")))
    old = {k: v for k, v in now.settings().items() if k not in ("hide_below", "fresh_sample")}
    assert saved_settings(old) == make_request(Overrides(), None, old).settings()
    from ipo_cli.optimize.run_folder import compare_settings

    assert compare_settings(saved_settings(old), now.settings()) == []
    assert compare_settings(saved_settings({**old, "steps": 7}), now.settings())  # a real change still shows
