#!/bin/sh
# Container entry point. The first word picks the program:
#   broker ARGS...  -> ev-broker ARGS...     (no arguments at all: ev-broker serve)
#   station ARGS... -> ev-station ARGS...
#   vehicle ARGS... -> ev-vehicle ARGS...
# anything else (ev-broker ..., sh, python ...) runs as given.
# Every option of every program also reads EV_<OPTION_NAME> from the environment.
set -e
case "${1:-}" in
    "") exec ev-broker serve ;;
    broker | station | vehicle)
        prog="ev-$1"
        shift
        exec "$prog" "$@"
        ;;
esac
exec "$@"
