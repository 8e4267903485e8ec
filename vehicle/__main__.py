"""``python -m vehicle``: the ``ev-vehicle`` command line."""

from __future__ import annotations

from vehicle.cli import main

if __name__ == "__main__":
    main()
