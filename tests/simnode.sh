#!/bin/sh
# Run "$@" as one simulated node: its own mount and UTS namespaces, its own hostname and a
# private /tmp, so that each MPI rank (or Slurm task) behaves like a separate machine.
# Needs root (unshare -m -u). Used by tests/simnodes.py and as launcher.wrap=[.../simnode.sh].
#
#   EZPZ_SIM_PPN=K        ranks rank//K share one node (default 1 rank per node)
#   EZPZ_SIM_KEEP_HOSTNAME=1  the node is the hostname the launcher gave (tests/fakessh.sh
#                         names a host's UTS namespace), not rank//K
#   EZPZ_SIM_ROOT=DIR     bind DIR/node<k> on /tmp instead of a fresh tmpfs (shared by a node's ranks)
#   EZPZ_SIM_TMP_SIZE=SZ  size of the private tmpfs (default 4g)
#   EZPZ_SIM_TMP_RO=N     mount node N's /tmp read-only (a failing node)
#   EZPZ_SIM_TMP_AT=N:SZ  give node N a /tmp of SZ only (a node whose /tmp fills up)
#   EZPZ_SIM_OUT=DIR      write rc.<rank> (and out.<rank> when EZPZ_SIM_CAPTURE=1) there
#   EZPZ_SIM_CHECK=FILE   python script run inside the node after the command, before /tmp
#                         vanishes; its stdout goes to DIR/check.<rank>
#   EZPZ_SIM_PYTHON=EXE   interpreter for the check script (default python3)
exec unshare -m -u --propagation private /bin/sh -c '
rank=${PMI_RANK:-${SLURM_PROCID:-${RANK:-0}}}
ppn=${EZPZ_SIM_PPN:-1}
node=$((rank / ppn))
if [ "$EZPZ_SIM_KEEP_HOSTNAME" = 1 ]; then node=$(hostname)
elif [ -n "$SLURMD_NODENAME" ]; then hostname "$SLURMD_NODENAME"; node=$SLURMD_NODENAME
else hostname "node$node"; node="node$node"; fi
size=${EZPZ_SIM_TMP_SIZE:-4g}
if [ -n "$EZPZ_SIM_TMP_AT" ] && [ "${EZPZ_SIM_TMP_AT%%:*}" = "$node" ]; then
  size=${EZPZ_SIM_TMP_AT#*:}
fi
if [ -n "$EZPZ_SIM_ROOT" ]; then
  mkdir -p "$EZPZ_SIM_ROOT/$node" && mount --bind "$EZPZ_SIM_ROOT/$node" /tmp || exit 97
else
  mount -t tmpfs -o "size=$size" tmpfs /tmp || exit 97
fi
if [ -n "$EZPZ_SIM_TMP_RO" ] && [ "$EZPZ_SIM_TMP_RO" = "$node" ]; then
  mount -o remount,ro /tmp || exit 97
fi
# The command runs as a child; signals sent to this wrapper (a launcher cleaning up, a
# failure notice) are passed on to it, and its exit status and /tmp are still recorded.
exec 3<&0
if [ -n "$EZPZ_SIM_OUT" ] && [ "$EZPZ_SIM_CAPTURE" = 1 ]; then
  "$@" <&3 3<&- >"$EZPZ_SIM_OUT/out.$rank" 2>&1 &
else
  "$@" <&3 3<&- &
fi
child=$!
exec 3<&-
for sig in HUP INT TERM USR1 USR2; do trap "kill -$sig $child 2>/dev/null" "$sig"; done
wait "$child"; rc=$?
while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done
# MPICH hydra tells the ranks left of a failed job with SIGUSR1 (to the process group):
# the check below must not die of it.
trap "" USR1
if [ -n "$EZPZ_SIM_OUT" ]; then
  echo "$rc" >"$EZPZ_SIM_OUT/rc.$rank"
  if [ -n "$EZPZ_SIM_CHECK" ]; then
    "${EZPZ_SIM_PYTHON:-python3}" "$EZPZ_SIM_CHECK" >"$EZPZ_SIM_OUT/check.$rank" 2>&1
  fi
fi
exit "$rc"
' simnode "$@"
