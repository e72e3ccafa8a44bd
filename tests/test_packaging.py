"""`pip install .` installs the engine, the dashboard and the `pruning-studio` console script, with
the built-in texts, so both work outside the repository."""

import os
import subprocess
import sys

from conftest import REPO


def test_pip_install_puts_engine_app_and_data_outside_the_repo(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                            "--target", str(target), str(REPO)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    assert (target / "bin" / "pruning-studio").is_file()
    code = ("import pathlib, pruner, components, app\n"
            "from pruner.data import BUILTIN_CALIBRATION\n"
            "from pruner.recover import BUILTIN_PROMPTS\n"
            "from pruner.text_cache import SHIPPED\n"
            f"site = pathlib.Path({str(target)!r})\n"
            "for module in (pruner, components, app):\n"
            "    assert site in pathlib.Path(module.__file__).parents, module.__file__\n"
            "assert BUILTIN_CALIBRATION.is_file() and BUILTIN_PROMPTS.is_file()\n"
            "assert list(SHIPPED.glob('*.txt')), 'the default calibration text'\n"
            "assert (pathlib.Path(app.__file__).parent / 'components' / 'assets' / 'style.css').is_file()\n"
            "assert callable(app.main)\n"
            "print('ok')\n")
    env = dict(os.environ, PYTHONPATH=str(target))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=600)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]
