#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, from Debian's packages, for the `slurm` tests (make test-slurm):
#
#   scripts/slurm-local.sh install   apt-get install slurmctld slurmd munge (as root), if sbatch is missing
#   scripts/slurm-local.sh start     munge key, slurm.conf naming this host with its CPUs and memory, then
#                                    munged, slurmctld and slurmd; returns once the node takes jobs
#   scripts/slurm-local.sh stop      stops the three daemons it started
#   scripts/slurm-local.sh status    sinfo's view of the node
#
# No cgroups (containers often have none): processes are tracked by their parent ids (proctrack/linuxproc) and
# tasks are not bound (task/none). Jobs stay visible to `scontrol show job` for a day (MinJobAge) because there
# is no accounting database for sacct here. State, spool and logs live under $SLURM_LOCAL_DIR.
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/var/tmp/remax-bench-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by remax-bench scripts/slurm-local.sh"
KEY=/etc/munge/munge.key

need_root() {
    if [ "$(id -u)" != 0 ]; then echo "slurm-local: $1 needs root (the daemons run as root here)" >&2; exit 2; fi
}

install() {
    if command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
            && command -v munged >/dev/null; then
        return 0
    fi
    need_root "installing slurmctld, slurmd and munge"
    if ! command -v apt-get >/dev/null; then echo "slurm-local: no apt-get here to install Slurm" >&2; exit 2; fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd munge >/dev/null
}

write_conf() {
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        echo "slurm-local: $CONF exists and was not written by this script; not touching it" >&2
        exit 2
    fi
    local host node
    host=$(hostname -s)
    # `slurmd -C` prints this machine's node line: CPUs, sockets, cores, threads and RealMemory (MiB).
    node=$(slurmd -C | head -n 1)
    mkdir -p "$(dirname "$CONF")" "$DIR/ctld" "$DIR/d" "$DIR/log"
    cat > "$CONF" <<CONFEOF
$MARK
ClusterName=remaxlocal
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/d
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
MinJobAge=86400
JobRequeue=1
KillWait=30
# How long a requeued job waits before it may start again (Slurm's default, 120 s, is the credential lifetime).
AuthInfo=cred_expire=15
MailProg=/bin/true
SchedulerType=sched/backfill
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONFEOF
}

start_munge() {
    if [ -f "$DIR/munged.pid" ] && kill -0 "$(cat "$DIR/munged.pid")" 2>/dev/null; then return 0; fi
    if [ ! -s "$KEY" ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of="$KEY" bs=1 count=1024 status=none
    fi
    chown munge:munge "$KEY" /etc/munge && chmod 0400 "$KEY" && chmod 0700 /etc/munge
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    cp /run/munge/munged.pid "$DIR/munged.pid"
}

wait_for_node() {
    local deadline=$((SECONDS + 60)) state=""
    while [ $SECONDS -lt $deadline ]; do
        state=$(sinfo -h -N -o %T 2>/dev/null | head -n 1 || true)
        case "$state" in idle|mixed|allocated) echo "slurm-local: node $(hostname -s) is $state"; return 0 ;; esac
        sleep 1
    done
    echo "slurm-local: the node did not come up (state: ${state:-no answer}); see $DIR/log/" >&2
    return 1
}

start() {
    need_root "start"
    install
    write_conf
    start_munge
    if ! { [ -f "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; }; then
        slurmctld -c  # -c: a clean start, no jobs from an earlier cluster
    fi
    if ! { [ -f "$DIR/slurmd.pid" ] && kill -0 "$(cat "$DIR/slurmd.pid")" 2>/dev/null; }; then
        slurmd
    fi
    wait_for_node
}

stop_pid() {
    local file=$1
    if [ -f "$file" ]; then
        local pid
        pid=$(cat "$file")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        rm -f "$file"
    fi
}

stop() {
    need_root "stop"
    stop_pid "$DIR/slurmd.pid"
    stop_pid "$DIR/slurmctld.pid"
    stop_pid "$DIR/munged.pid"
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) sinfo -N -l ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
