"""bench.engine.memory pins glibc's mmap threshold: a freed large tensor must leave the resident set."""

import os
import subprocess
import sys
import textwrap

import pytest

import bench.engine.inputs as inputs_mod
from bench.engine.memory import bound_heap_growth

CHILD = textwrap.dedent("""
    import os, torch
    from bench.engine.memory import bound_heap_growth
    from bench.engine.options import Settings
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    print(bound_heap_growth(Settings.from_env().mmap_threshold))
    base = rss()
    for _ in range(3):          # 16 MB: first freed by munmap, which (by default) raises the
        t = torch.ones(4 << 20)  # threshold so the next ones come from the heap and stay resident
        del t
    print((rss() - base) / 2**20)
""")


def _resident_after_free(threshold: str) -> tuple[str, float]:
    env = {**os.environ, "BENCH_MMAP_THRESHOLD": threshold}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    applied, mb = out.stdout.split()
    return applied, float(mb)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_pinned_threshold_returns_freed_tensors_to_the_system():
    applied, pinned = _resident_after_free("")  # the default, 1 MiB
    assert applied == str(1 << 20)
    off, dynamic = _resident_after_free("0")
    assert off == "None"
    assert pinned < 4, pinned  # the 16 MB buffers went back
    assert dynamic > 12, dynamic  # glibc's dynamic threshold kept one in the heap


def test_bad_environment_value_names_the_variable():
    from bench.engine.options import Settings

    with pytest.raises(ValueError, match="BENCH_MMAP_THRESHOLD"):
        Settings.from_env({"BENCH_MMAP_THRESHOLD": "1MB"})
    assert Settings.from_env({}) == Settings(1 << 20, True)
    assert Settings.from_env({"BENCH_MMAP_THRESHOLD": "0", "BENCH_TRIM_LAYERS": "0"}) == Settings(0, False)


def test_the_command_line_makes_openmp_threads_wait_passively_unless_the_user_chose():
    """Importing bench (or its registry) changes no process-wide state; the command line sets the
    policy for its process and the processes it starts."""
    imported = "import bench, bench.registry, os; print(os.environ.get('OMP_WAIT_POLICY'))"
    cli = "import os, bench.cli as c; c.passive_openmp(); print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", imported], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"
    out = subprocess.run([sys.executable, "-c", cli], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", cli], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"


TRIM_CHILD = textwrap.dedent("""
    import os, torch
    from bench.engine.memory import bound_heap_growth, release_between_layers, release_free_memory, trimming
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    bound_heap_growth()
    pinned = []
    class Churn(torch.nn.Module):
        # 48 MB of 256 KB tensors (below the 1 MiB threshold: glibc's heap), each followed by
        # a small tensor that outlives the layer: freed, they cannot merge into the heap top,
        # and stay resident
        def forward(self, x):
            junk = []
            for _ in range(192):
                junk.append(torch.ones(64 << 10))
                pinned.append(torch.ones(256))
            del junk
            return x * 2
    layers = torch.nn.ModuleList([Churn(), Churn()])
    print(len(release_between_layers(layers)))
    seen = {}
    layers[1].register_forward_pre_hook(lambda m, a: seen.update(fwd=rss()))  # runs after ours
    x = torch.ones(4, requires_grad=True)
    release_free_memory()
    base = rss()
    with trimming(os.environ["BENCH_TRIM_LAYERS"] == "1"):  # the policy the unit executor enters
        y = layers[1](layers[0](x))
        after_fwd = rss() - base
        y.register_hook(lambda g: seen.update(bwd=rss()))  # runs after the layer's own hook
        y.sum().backward()
    print(seen["fwd"] - base, after_fwd, seen["bwd"] - base)
""")


def _trim_child(flag: str) -> list[float]:
    env = {**os.environ, "BENCH_TRIM_LAYERS": flag}
    out = subprocess.run([sys.executable, "-c", TRIM_CHILD], env=env, capture_output=True, text=True, check=True)
    return [float(v) for v in out.stdout.split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_release_between_layers_returns_freed_heap_pages_at_each_layer():
    n_on, at_layer2_on, _, at_bwd_on = _trim_child("1")
    n_off, at_layer2_off, _, at_bwd_off = _trim_child("0")
    assert (n_on, n_off) == (4, 4)  # a pre-hook and a forward hook per layer; they act inside the policy only
    # off: the 48 MB of freed heap tensors are still resident when layer 2 starts and when the
    # backward starts
    assert at_layer2_off > 40 and at_bwd_off > 40, (at_layer2_off, at_bwd_off)
    # on: handed back when layer 2 starts, and again when its backward starts
    assert at_layer2_on < 10 and at_bwd_on < 10, (at_layer2_on, at_bwd_on)


def test_bad_trim_flag_names_the_variable():
    from bench.engine.options import Settings

    with pytest.raises(ValueError, match="BENCH_TRIM_LAYERS"):
        Settings.from_env({"BENCH_TRIM_LAYERS": "yes"})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_bench_pixelmamba_trims_on_the_streamed_path_only(monkeypatch):
    """bench's Pixel-Mamba trims when a layer starts on the streamed path (forward, recomputed
    and backward: 3 x 24 layer starts at segment 2, less one: the backward trim waits for the
    gradient of a layer's output tokens, and the last layer's tokens get none, only its CLS feeds
    the head) and when a stage inside a streamed layer starts (pixelmamba's release hook), not on
    the plain path of small inputs, where it only costs time; and only inside the policy the unit
    executor enters (``memory.trimming``): building the model sets nothing process-wide, leaving
    the policy restores pixelmamba's hook, and trimming off sets neither."""
    import torch

    import bench.engine.memory as mem
    from bench.engine.models import pixelmamba
    from pixelmamba.streaming import set_release_hook

    calls: list[int] = []
    monkeypatch.setattr(mem, "release_free_memory", lambda: calls.append(1) or True)
    import pixelmamba.model as pm_model

    # the paper's "small input" threshold (four 224² regions) scaled to four 32² regions, so that
    # six 32² regions below are a slide (the streamed path)
    monkeypatch.setattr(pm_model, "UNPIECED_TOKENS", 4 * 32**2)
    before = set_release_hook(None)
    torch.manual_seed(0)
    model = pixelmamba(2, scan_window=32)
    assert set_release_hook(None) is None  # the build installed no process-wide hook
    model(torch.randn(1, 3, 64, 96)).sum().backward()  # streamed, outside the policy: no trims
    with mem.trimming(False):
        model(torch.randn(1, 3, 64, 96)).sum().backward()
        assert set_release_hook(None) is None
    assert calls == []
    stages: list[int] = []
    with mem.trimming(True):
        assert set_release_hook(lambda: stages.append(1)) is mem.release_free_memory
        model(torch.randn(1, 3, 32, 32)).sum().backward()  # one region: the plain path
        assert calls == [] and stages == []
        model(torch.randn(1, 3, 64, 96)).sum().backward()  # six regions: streamed
    assert set_release_hook(before) is None  # left: the hook that was there before is back
    assert len(calls) == 3 * 24 - 1
    # each layer: forward and recomputation, 3 stages each (two sweeps, one fusion pass); its
    # backward 3 more (two sweeps, the fusion's backward), less the last layer's fusion backward
    # (its tokens get no gradient); and one before every piece but the first of the backward's
    # second sweep (six 32² regions: pieces below the 8 MB cap, model.releases_pieces)
    assert model.releases_pieces(6)
    pieces = [-(-row.seq_len // model.layer_chunk(layer, 6)) for layer, row in zip(model.layers, model.plan(64, 96))]
    assert len(stages) == 24 * 9 - 1 + sum(p - 1 for p in pieces)


def test_streamed_layer_call_reads_the_streaming_argument_by_name():
    """The trim hooks' test of "streamed?" binds a layer call's positional arguments to
    ``PixelMambaLayer.forward``'s parameters: the model's own calls, both ways, and the default."""
    import torch

    from bench.engine.models import streamed_layer_call

    t = torch.zeros(1)
    assert streamed_layer_call((t, t, t, 1, 64, True, False)) is True
    assert streamed_layer_call((t, t, t, 1, 64, False, False)) is False
    assert streamed_layer_call((t, t, t, 1, None, False)) is False
    assert streamed_layer_call((t, t, t, 1)) is True  # PixelMambaLayer.forward's default


SCOPED_CHILD = textwrap.dedent("""
    import ctypes, torch
    from bench.engine.memory import bounded_heap
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    def mapped():  # bytes of a live 2 MB tensor that glibc serves with its own mmap (0: from the heap)
        base = libc.mallinfo2().hblkhd
        t = torch.ones(1 << 19)
        got = libc.mallinfo2().hblkhd - base
        del t
        return got
    mapped()  # glibc's dynamic threshold rises past 2 MB after the first such free
    before = mapped()
    with bounded_heap() as threshold:
        inside = mapped()
    after = mapped()
    with bounded_heap(False) as none:
        off = mapped()
    print(threshold, none, before, inside, after, off)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_the_pin_holds_only_inside_bounded_heap():
    """`bench run` pins the threshold for end-to-end units only: inside, every 2 MB tensor is a fresh
    mapping (page faults); outside, and before any pin, freed tensors are reused from the heap."""
    env = {k: v for k, v in os.environ.items() if k != "BENCH_MMAP_THRESHOLD"}
    out = subprocess.run([sys.executable, "-c", SCOPED_CHILD], env=env, capture_output=True, text=True, check=True)
    threshold, none, before, inside, after, off = out.stdout.split()
    assert (threshold, none) == (str(1 << 20), "None")
    print("bytes of a 2 MB tensor in its own mapping: before", before, "pinned", inside, "released", after, "off", off)
    assert int(inside) >= 1 << 21  # pinned at 1 MiB: a fresh mapping, returned to the system on free
    assert int(before) == int(after) == int(off) == 0  # glibc's heap otherwise


def test_runner_bounds_the_heap_for_end_to_end_units_only(monkeypatch, tmp_path):
    from bench.engine import runner

    seen = []
    real = runner.unit_memory_policy

    def spy(end_to_end, settings):
        seen.append(end_to_end)
        return real(False, settings)  # record the decision, leave this test process's malloc alone

    monkeypatch.setattr(runner, "unit_memory_policy", spy)
    from fake_inputs import BagInputs, write_toy_cohort

    spec, _ = write_toy_cohort(tmp_path, 20, slide_bytes=lambda i: b"II*\x00" + bytes([i]) * 100)
    monkeypatch.setitem(inputs_mod.FEATURE_INPUTS, "features", BagInputs)
    from bench.registry import get_method

    runner.run([get_method("meanmil.resnet50")], str(spec), tasks=["staging"], folds=[0],
               results=tmp_path / "results", progress=False, train_overrides={"epochs": 1})
    assert seen == [False]
