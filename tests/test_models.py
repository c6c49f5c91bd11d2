"""Guarantees every registered model keeps (new families get them by registering)."""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim

import mobilevits
from mobilevits import create_model, get_model_info, list_models

ALL = list_models(include_tiny=True)
PAPER = [n for n in ALL if get_model_info(n).paper is not None]


def _representative() -> list[str]:
    """Every reduced config and the smallest paper variant of each family (by params), plus Mobile-Former's
    grouped 26M: the paper variants of a family share their code and differ in widths and depths, which
    ``test_export_and_fuse_at_paper_resolution`` covers for every one of them at full size."""
    chosen = {n for n in ALL if get_model_info(n).tiny} | {"mobile_former_26m"}
    for family in {get_model_info(n).family for n in PAPER}:
        chosen.add(min((n for n in PAPER if get_model_info(n).family == family),
                       key=lambda n: get_model_info(n).paper.params))
    return sorted(chosen)


REPRESENTATIVE = _representative()


def _small_model(name: str) -> tuple[torch.nn.Module, int]:
    """The model at its smallest resolution, re-randomised so norms are not trivial."""
    info = get_model_info(name)
    res = info.min_resolution
    torch.manual_seed(0)
    model = create_model(name, num_classes=16, resolution=res, drop_path_rate=0.1).eval()
    mobilevits.rerandomize_(model, seed=1)
    return model, res


def _export(model: torch.nn.Module, res: int) -> torch.export.ExportedProgram:
    batch = Dim("batch", min=1, max=32)
    return torch.export.export(model, (torch.randn(2, 3, res, res),), dynamic_shapes=({0: batch},))


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_export_dynamic_batch_rank_and_no_dropout(name):
    model, res = _small_model(name)
    ep = _export(model, res)
    # dropout / drop-path must vanish in eval: no random op in the graph
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("dropout" in t or "bernoulli" in t or "rand" in t for t in targets), targets
    # Core ML's limit: no tensor above rank 5 anywhere
    ranks = [len(n.meta["val"].shape) for n in ep.graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)]
    assert max(ranks) <= 5
    # the exported program runs at another batch size and agrees with eager
    x = torch.randn(3, 3, res, res)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_batch_independence_and_fuse(name):
    model, res = _small_model(name)
    x = torch.randn(2, 3, res, res)
    with torch.no_grad():
        y2 = model(x)
        y1 = torch.cat([model(x[:1]), model(x[1:])])
        torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
        # eval is deterministic (dropout and drop-path off)
        torch.testing.assert_close(model(x), y2, rtol=0, atol=0)
        n_bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
        fused = mobilevits.reparameterize_model(model)
        left = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules())
        assert n_bn == 0 or left < n_bn, "fuse() folded no BatchNorm"
        torch.testing.assert_close(fused(x), y2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", PAPER)
def test_params_and_macs_match_paper(name):
    info = get_model_info(name)
    paper = info.paper
    model = create_model(name, resolution=paper.resolution)
    assert mobilevits.num_params(model) == paper.params
    if paper.macs_m is not None:
        macs = mobilevits.count_macs(model, paper.resolution, count_norms=paper.macs_counts_norms,
                                     count_attention=paper.macs_counts_attention) / 1e6
        assert abs(macs - paper.macs_m) / paper.macs_m <= paper.macs_tolerance, (macs, paper.macs_m)


@pytest.mark.parametrize("name", ALL)
def test_preprocess_declared(name):
    info = get_model_info(name)
    model = create_model(name)
    pp = model.preprocess
    assert pp.resolution == info.default_resolution == model.resolution
    assert len(pp.mean) == len(pp.std) == 3 and all(s > 0 for s in pp.std)
    assert (pp.color, pp.layout) == ("RGB", "NCHW")


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER)
def test_export_and_fuse_at_paper_resolution(name):
    """Full-size variants at their paper resolution: exports, and fused == unfused."""
    info = get_model_info(name)
    res = info.paper.resolution
    torch.manual_seed(0)
    model = create_model(name, resolution=res).eval()
    mobilevits.rerandomize_(model, seed=2)
    x = torch.randn(1, 3, res, res)
    with torch.no_grad():
        y = model(x)
        ep = torch.export.export(model, (x,))
        torch.testing.assert_close(ep.module()(x), y, rtol=1e-4, atol=1e-4)
        fused = mobilevits.reparameterize_model(model)
        torch.testing.assert_close(fused(x), y, rtol=1e-4, atol=1e-4)
