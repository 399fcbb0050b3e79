"""The unlearning loop: phases over named streams, paired batches, hooks."""

import torch
from torch import nn

from unbake.methods._blocks import GradientMask
from unbake.training import TrainConfig
from unbake.training.loop import Phase, optimize, run_phases


def _streams():
    g = torch.Generator().manual_seed(0)
    return {
        "forget": (torch.randn(10, 4, generator=g), torch.randint(3, (10,), generator=g)),
        "retain": (torch.randn(25, 4, generator=g), torch.randint(3, (25,), generator=g)),
    }


def _net(seed=0):
    torch.manual_seed(seed)  # test-only; library code never touches the global RNG
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_paired_phase_walks_one_stream_and_cycles_the_other():
    seen = {"forget": [], "retain": []}

    def step(model, got, _):
        for name, (x, _y) in got.items():
            seen[name].append(len(x))
        return model(got["retain"][0]).sum() * 0

    cfg = TrainConfig(epochs=1, batch_size=4)
    run_phases(_net(), _streams(), [Phase("retain", step, 2, paired=("forget",))], cfg, seed=1)
    assert seen["retain"] == [4] * 6 + [1] + [4] * 6 + [1]  # two epochs of 25 rows
    assert len(seen["forget"]) == 14 and sum(seen["forget"][:3]) == 10  # 4 + 4 + 2, again


def test_same_seed_same_bits_and_single_phase_is_optimize():
    s = _streams()
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.01)

    def ce(model, got, _):
        return nn.functional.cross_entropy(model(got["train"][0]), got["train"][1])

    a, b = _net(), _net()
    optimize(a, *s["retain"], cfg, seed=5)
    run_phases(b, {"train": s["retain"]}, [Phase("train", ce, epochs=2)], cfg, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_gradient_mask_keeps_masked_weights_and_their_optimiser_state():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    mask = {
        k: torch.rand(v.shape, generator=torch.Generator().manual_seed(3)) < 0.5
        for k, v in net.named_parameters()
    }
    hook = GradientMask(mask)
    seen_state = []

    class Spy:
        def after_backward(self, model, optimizer):
            pass

        def after_step(self, model, optimizer):
            seen_state.append(optimizer)

    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.05, weight_decay=0.1)

    def ce(model, got, _):
        return nn.functional.cross_entropy(model(got["retain"][0]), got["retain"][1])

    run_phases(net, _streams(), [Phase("retain", ce, 2)], cfg, seed=0, hooks=[hook, Spy()])
    optimizer = seen_state[-1]
    for name, p in net.named_parameters():
        m = mask[name]
        assert torch.equal(p[~m], before[name][~m]), f"{name} moved outside the mask"
        assert not torch.equal(p[m], before[name][m]), f"{name} did not move inside the mask"
        for v in optimizer.state[p].values():
            if torch.is_tensor(v) and v.shape == p.shape:
                assert torch.count_nonzero(v[~m]) == 0


def test_a_phase_may_walk_its_stream_in_its_own_batch_size():
    seen = {"forget": [], "retain": []}

    def step(model, got, _):
        for name, (x, _y) in got.items():
            seen[name].append(len(x))
        return model(x).sum() * 0

    cfg = TrainConfig(epochs=1, batch_size=8)
    phases = [Phase("forget", step, batch_size=3), Phase("retain", step, paired=("forget",))]
    run_phases(_net(), _streams(), phases, cfg, seed=1)
    assert seen["forget"][:4] == [3, 3, 3, 1]  # its own batches over 10 rows
    assert seen["retain"] == [8, 8, 8, 1] and seen["forget"][4:] == [8, 2, 8, 2]  # config's


def test_a_phase_may_cap_its_steps_per_pass_with_a_fresh_draw_each_pass():
    seen = []

    def step(model, got, _):
        seen.append(sorted(got["forget"][0][:, 0].tolist()))
        return model(got["forget"][0]).sum() * 0

    cfg = TrainConfig(epochs=1, batch_size=8)
    run_phases(_net(), _streams(), [Phase("forget", step, 3, batch_size=2, steps=2)], cfg, seed=1)
    assert len(seen) == 6 and all(len(b) == 2 for b in seen)  # 2 of 5 batches, 3 passes
    assert seen[:2] != seen[2:4]  # each pass draws its own batches
    run_phases(_net(), _streams(), [Phase("forget", step, 1, steps=9)], cfg, seed=1)
    assert [len(b) for b in seen[6:]] == [8, 2]  # a cap above the pass's batches: all of them
