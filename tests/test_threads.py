"""The thread policy: passive OpenMP waits, threads sized to the work, and a load test."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from unbake import InvalidParameterError, configure_threads
from unbake._threads import auto_threads, forward_flops, pin_threads, thread_policy, threads_for
from unbake.models import build_model


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    child = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "UNBAKE_THREADS")}
    child.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], env=child, capture_output=True, text=True, check=False
    )


def test_importing_unbake_sets_the_passive_policy_before_torch():
    proc = _run(
        "import os, unbake; from unbake._threads import thread_policy; "
        "print(os.environ['OMP_WAIT_POLICY'], thread_policy()['wait_policy'])"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["PASSIVE", "PASSIVE"]


def test_a_users_own_policy_is_kept():
    proc = _run("import os, unbake; print(os.environ['OMP_WAIT_POLICY'])", OMP_WAIT_POLICY="ACTIVE")
    assert proc.stdout.strip() == "ACTIVE"


def test_torch_first_warns_and_keeps_training_on_one_thread():
    code = (
        "import warnings, torch, unbake\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    unbake.configure_threads()\n"
        "print(sum(issubclass(x.category, unbake.ThreadPolicyWarning) for x in w))\n"
        "from unbake._threads import auto_threads\n"
        "print(auto_threads(1e15))\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "1"]
    # With the policy set before Python started, torch-first is fine: no warning.
    proc = _run(code, OMP_WAIT_POLICY="PASSIVE")
    assert proc.stdout.split()[0] == "0"


def test_small_models_train_on_one_thread_and_large_work_on_more():
    mlp = build_model("mlp", input_shape=(1, 8, 8), n_classes=10, seed=0)
    x = torch.zeros(64, 1, 8, 8)
    assert 0 < forward_flops(mlp, x) < 1e8
    with threads_for(mlp, x) as n:
        assert n == 1 == torch.get_num_threads()
    assert auto_threads(1e15) == len(os.sched_getaffinity(0))


def test_counting_flops_leaves_the_model_untouched():
    net = build_model("cnn", input_shape=(1, 28, 28), n_classes=10, seed=0)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    forward_flops(net, torch.randn(8, 1, 28, 28))
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_fixed_and_pinned_counts_win_and_are_restored():
    mlp = build_model("mlp", input_shape=(1, 8, 8), n_classes=10, seed=0)
    x = torch.zeros(4, 1, 8, 8)
    outer = torch.get_num_threads()
    try:
        configure_threads(2)
        assert thread_policy()["threads"] == 2
        with threads_for(mlp, x) as n:
            assert n == 2
        with pin_threads(1), threads_for(mlp, x) as n:
            assert n == 1
    finally:
        configure_threads(None)
        torch.set_num_threads(outer)
    assert thread_policy()["threads"] == "auto"


@pytest.mark.parametrize("bad", [0, -2])
def test_bad_thread_counts_are_refused(bad):
    with pytest.raises(InvalidParameterError, match="--threads"):
        configure_threads(bad)


def test_cli_refuses_zero_threads(tmp_path):
    # In this process (a real process's exit code: tests/integration/test_cli.py).
    from tests.integration.test_cli import assert_one_line_error, run

    before = thread_policy()
    assert_one_line_error(run("train", "--threads", "0", "-w", tmp_path / "w"), "--threads")
    assert not (tmp_path / "w").exists()
    assert thread_policy() == before  # nothing was configured
