"""``python -m station``: the ``ev-station`` command line."""

from station.cli import main

main()
