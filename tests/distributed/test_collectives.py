"""The distributed package over real torchrun processes on gloo: the env contract, collectives, main_first, restarts.

L1 (RELIABILITY.md): `torchrun --standalone --nproc-per-node 2` runs a probe through our env, session,
collectives and main_first. F4: rank 0's main_first body sleeps twice the process-group timeout and
the other rank still starts after it, without tripping the timeout (a barrier does trip it: the
negative control at the end). Finding 2: after a static-rendezvous restart the store holds none of
the previous attempt's keys.
"""

from __future__ import annotations

import json
import textwrap

import pytest

pytestmark = pytest.mark.dist

TIMEOUT_S, SLOW_S = 3.0, 6.0

L1_PROBE = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    import torch
    import torch.distributed as dist
    from yolodist.distributed import collectives as C
    from yolodist.distributed.env import detect
    from yolodist.distributed.scope import main_first
    from yolodist.distributed.session import session
    from yolodist.errors import DistFailure

    OUT, TIMEOUT_S, SLOW_S = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    env = detect("cpu")
    names = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK")
    rec = {"launcher": {k: int(os.environ[k]) for k in names},
           "env": [env.rank, env.local_rank, env.world_size, env.local_world_size, env.node_rank],
           "mode": [env.mode, env.backend, str(env.device), env.is_main, env.is_local_main]}
    # Start together, so the short process-group timeout is not spent on uneven imports.
    (OUT / f"ready{env.rank}").touch()
    while not all((OUT / f"ready{r}").exists() for r in range(env.world_size)):
        time.sleep(0.05)

    with session(env, timeout_s=TIMEOUT_S):
        t = torch.tensor([env.rank + 1.0, 10.0 * (env.rank + 1)])
        rec["sum"] = C.all_reduce(t.clone(), env, "sum").tolist()
        rec["mean"] = C.all_reduce(t.clone(), env, "mean").tolist()
        rec["max"] = C.all_reduce(t.clone(), env, "max").tolist()
        rec["gather"] = C.all_gather_object({"rank": env.rank}, env)
        rec["bcast"] = C.broadcast_object(f"from rank {env.rank}", env)
        pairs = [("b", torch.tensor(1.0 + env.rank)), ("a", torch.tensor(10.0 * env.rank))]
        reduced = C.reduce_dict(dict(pairs if env.rank == 0 else pairs[::-1]), env, average=False)
        rec["reduce_dict"] = {k: v.item() for k, v in reduced.items()}
        rec["world"] = C.world_size(env)

        with main_first(env, local=True, name="slow"):
            start = time.time()
            if env.rank == 0:
                time.sleep(SLOW_S)  # longer than the process-group timeout
            rec["slow"] = [start, time.time()]
        rec["after_slow"] = C.all_reduce(torch.ones(1), env).item()

        try:
            with main_first(env, local=False, name="fails"):
                if env.is_main:
                    raise RuntimeError("boom")
            rec["fails"] = "ran the body"
        except RuntimeError:
            rec["fails"] = "own error"
        except DistFailure as e:
            rec["fails"] = "DistFailure: " + str(e)
        C.barrier(env)

        gathered = C.all_gather_object(rec, env)
        if env.rank == 0:
            (OUT / "l1.json").write_text(json.dumps(gathered))
            time.sleep(TIMEOUT_S + 1)  # negative control: keep rank 1 waiting in a barrier
        else:
            started = time.time()
            try:
                dist.barrier()
                control = {"tripped": False}
            except Exception as e:
                control = {"tripped": True, "after_s": time.time() - started, "error": str(e)[:200]}
            (OUT / "control.json").write_text(json.dumps(control))
    """
)

RESTART_PROBE = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    import torch
    from torch.distributed.distributed_c10d import _get_default_store
    from yolodist.distributed import collectives as C
    from yolodist.distributed.env import detect
    from yolodist.distributed.session import session

    OUT = Path(sys.argv[1])
    env = detect("cpu")
    with session(env, timeout_s=30):
        store = _get_default_store()
        mine = f"seen-by-rank{env.rank}"
        fresh = not store.check([mine])  # no key left over from this rank's earlier attempt
        store.set(mine, str(env.restart_count))
        C.barrier(env)
        if env.restart_count == 0:
            if env.rank == 1:
                os._exit(1)  # abrupt death: the agent restarts both ranks
            time.sleep(60)
        total = C.all_reduce(torch.ones(1), env).item()
        rec = {"restart": env.restart_count, "agent_store": env.agent_store, "total": total, "fresh": fresh}
        C.barrier(env)
        if env.rank == 0:
            (OUT / "restart.json").write_text(json.dumps(rec))
    """
)

TEARDOWN_PROBE = textwrap.dedent(
    """
    import gc, json, sys, weakref
    from pathlib import Path
    import torch.distributed as dist
    from yolodist.distributed import collectives as C
    from yolodist.distributed.env import detect
    from yolodist.distributed.session import session

    OUT = Path(sys.argv[1])
    env = detect("cpu")
    late = "torch._dynamo" not in sys.modules  # else the import below would prove nothing
    with session(env, timeout_s=30):
        group = weakref.ref(dist.group.WORLD)
        import torchvision  # noqa: F401  (imports torch._dynamo, as the data and model code do)
        C.all_gather_object(env.rank, env)
    gc.collect()
    (OUT / f"teardown{env.rank}.json").write_text(json.dumps({"late": late, "freed": group() is None}))
    """
)


@pytest.mark.timeout(120)
@pytest.mark.timing
def test_l1_env_contract_collectives_and_main_first(tmp_path, torchrun):
    script = tmp_path / "probe.py"
    script.write_text(L1_PROBE)
    proc = torchrun([str(script), str(tmp_path), str(TIMEOUT_S), str(SLOW_S)], standalone=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = json.loads((tmp_path / "l1.json").read_text())
    for rank, rec in enumerate(ranks):
        launcher = rec["launcher"]
        assert rec["env"] == [rank, rank, 2, 2, 0] == [launcher[k] for k in launcher]
        assert rec["mode"] == ["ddp", "gloo", "cpu", rank == 0, rank == 0]
        assert rec["sum"] == [3.0, 30.0] and rec["mean"] == [1.5, 15.0] and rec["max"] == [2.0, 20.0]
        assert rec["gather"] == [{"rank": 0}, {"rank": 1}]
        assert rec["bcast"] == "from rank 0"
        assert rec["reduce_dict"] == {"a": 10.0, "b": 3.0} and list(rec["reduce_dict"]) == ["a", "b"]
        assert rec["world"] == 2 and rec["after_slow"] == 2.0
    (start0, end0), (start1, _) = ranks[0]["slow"], ranks[1]["slow"]
    assert end0 - start0 >= SLOW_S > 1.5 * TIMEOUT_S
    assert start1 >= end0  # rank 1's body began only after rank 0's ended
    assert ranks[0]["fails"] == "own error"
    assert ranks[1]["fails"].startswith("DistFailure") and "fails" in ranks[1]["fails"]
    control = json.loads((tmp_path / "control.json").read_text())
    assert control["tripped"] and control["after_s"] < SLOW_S, control  # a barrier would not have survived


@pytest.mark.timeout(120)
@pytest.mark.timing
def test_static_rendezvous_restart_keeps_keys_per_attempt(tmp_path, torchrun):
    script = tmp_path / "restart.py"
    script.write_text(RESTART_PROBE)
    proc = torchrun([str(script), str(tmp_path)], launcher_args=["--max-restarts", "1"], timeout=90)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rec = json.loads((tmp_path / "restart.json").read_text())
    # Without the per-attempt prefix, attempt 1 would see attempt 0's keys (stale gloo addresses,
    # and main_first keys already marked done).
    assert rec == {"restart": 1, "agent_store": True, "total": 2.0, "fresh": True}


@pytest.mark.timeout(120)
def test_session_frees_the_group_when_torchvision_is_imported_inside(tmp_path, torchrun):
    # A group still alive at interpreter exit takes its gloo threads down during finalisation, which
    # sometimes aborts a rank after its work is done ("terminate called without an active exception").
    script = tmp_path / "teardown.py"
    script.write_text(TEARDOWN_PROBE)
    proc = torchrun([str(script), str(tmp_path)], timeout=90)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for rank in range(2):
        assert json.loads((tmp_path / f"teardown{rank}.json").read_text()) == {"late": True, "freed": True}
