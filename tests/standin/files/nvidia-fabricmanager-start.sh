#!/bin/sh
# Stand-in for the R580 fabric manager start wrapper that nvidia-fabricmanager.service runs
# (--mode precheck / start / stop). "start" forks the stand-in daemon, as Type=forking expects.
mode=""
while [ $# -gt 0 ]; do
    case "$1" in
        --mode) mode="${2:-}"; shift 2 ;;
        *) shift ;;
    esac
done
case "$mode" in
    precheck | stop) exit 0 ;;
    start)
        /usr/bin/nv-fabricmanager -c /usr/share/nvidia/nvswitch/fabricmanager.cfg >/dev/null 2>&1 &
        exit 0
        ;;
    *) echo "usage: $0 --mode precheck|start|stop" >&2; exit 2 ;;
esac
