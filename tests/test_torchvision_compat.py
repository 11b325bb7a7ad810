"""`import timm` works in a fresh interpreter of the venv, next to a CPU torch, without importing featup."""

import subprocess
import sys


def test_timm_imports_in_a_fresh_interpreter_without_featup():
    # The venv's .pth hook (written by ./run) must arm the fix in every process, e.g. Dask workers.
    code = "import timm, torchvision, sys; print('featup' in sys.modules, torchvision.__version__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_hook_does_nothing_where_torchvision_ops_load():
    code = (
        "import featup._torchvision_compat as c, torch\n"
        "c._torchvision_ops_library = lambda: None\n"  # as if there were nothing to fix
        "assert c.declare_missing_ops() is False and c._library is None\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_torchvision_ops_raise_rather_than_crash_when_their_library_cannot_load():
    code = (
        "import featup, torch, torchvision\n"
        "from featup import _torchvision_compat as c\n"
        "if c._library is not None:\n"
        "    try:\n"
        "        torchvision.ops.nms(torch.rand(2, 4), torch.rand(2), 0.5)\n"
        "    except RuntimeError as e:\n"
        "        print('raised', e)\n"
        "    else:\n"
        "        raise SystemExit('nms ran without its compiled library')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
