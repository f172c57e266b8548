"""google.colab.drive: mount() makes mountpoint/MyDrive an ordinary folder, as if Drive were mounted there."""

from __future__ import annotations

from pathlib import Path


def mount(mountpoint: str, force_remount: bool = False, timeout_ms: int = 120000, readonly: bool = False) -> None:
    """Create mountpoint/MyDrive (the signature is Colab's; the options change nothing here)."""
    (Path(mountpoint) / "MyDrive").mkdir(parents=True, exist_ok=True)
    print(f"Mounted at {mountpoint}")
