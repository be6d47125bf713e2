"""Progress bars for long core work (calibration, AdaRound): tqdm where it is installed."""
from __future__ import annotations


def progress_bar(total, desc: str, unit: str):
    """A tqdm progress bar on stderr (tqdm ships with optuna); a no-op object without it."""
    try:
        from tqdm import tqdm
    except ImportError:   # progress is cosmetic
        class _Silent:
            def update(self, n):
                pass

            def close(self):
                pass

        return _Silent()
    return tqdm(total=total, desc=desc, unit=unit, mininterval=0.5, leave=False)
