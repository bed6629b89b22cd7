"""Building hamjax's wheel in a test, offline: ``pip wheel`` without dependencies or build isolation."""

import subprocess
import sys
import zipfile
from pathlib import Path


def wheel_names(source: Path, out: Path) -> set[str]:
    """The file names in the wheel ``pip wheel`` builds from ``source`` into ``out`` (it must build)."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = Path(out).glob("hamjax-*.whl")
    return set(zipfile.ZipFile(wheel).namelist())
