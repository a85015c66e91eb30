"""Build Anny's model cache once per machine (about a minute the first time).

Anny's first model construction writes ~800 MB to ``ANNY_CACHE_DIR``
(default ``~/.cache/anny``); later constructions take milliseconds. Set-up
runs this so that no test or user job pays for it.
"""

from __future__ import annotations

import time
import warnings


def main() -> None:
    start = time.perf_counter()
    warnings.filterwarnings("ignore")
    from inference.body.anny_body import TOPOLOGIES, load_anny

    for topology in TOPOLOGIES:
        load_anny(topology)
    print(f"Anny model cache ready ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
