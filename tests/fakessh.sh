#!/bin/sh
# A stand-in for ssh with which MPICH's hydra starts its proxy "on" another host: the proxy
# (and every rank it starts) runs on this machine in a UTS namespace whose hostname is that
# host, so each named host of a node file looks like a node of its own. Needs root (unshare).
#
#   mpiexec -f nodefile -launcher ssh -launcher-exec tests/fakessh.sh ...
#   fakessh.sh [-x ...] HOST COMMAND...     (hydra passes the proxy command as words of one
#                                            shell command line, as ssh would)
#   EZPZ_FAKESSH_LOG=FILE   append each HOST connected to
while [ $# -gt 0 ]; do case "$1" in -*) shift ;; *) break ;; esac; done
host=$1
shift
if [ -n "$EZPZ_FAKESSH_LOG" ]; then echo "$host" >>"$EZPZ_FAKESSH_LOG"; fi
exec unshare -u /bin/sh -c 'hostname "$0" || exit 97; exec /bin/sh -c "$*"' "$host" "$@"
