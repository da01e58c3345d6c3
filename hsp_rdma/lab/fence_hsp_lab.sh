#!/bin/sh
# fence_hsp_lab, in POSIX sh: the same agent as fence_agent.py (same options, exit codes and
# channel to the lab's fence device), for the guests' fast path: a Python interpreter alone
# takes 0.2 s to start in an idle TCG guest and ~1 s in a busy one, sh a few ms.
# Options as key=value lines on stdin: action=off|on|reboot|status|monitor|outdate|unoutdate|
# metadata, plug=NODE (or port=), timeout=SECONDS (60), share=/hsp (nodename= is accepted and
# not needed: the device knows the asker from its share). Exit 0 = done (status/monitor: 0 on,
# 2 off; outdate: marked; unoutdate: cleared), 1 = failed or refused (the device's reason on
# stdout). Run it as fence_agent.SH_COMMAND.
action=reboot plug= port= timeout=60 share=/hsp
while IFS= read -r line || [ -n "$line" ]; do
    while [ "${line# }" != "$line" ]; do line=${line# }; done
    case $line in '' | \#*) continue ;; esac
    key=${line%%=*} value=
    [ "$key" != "$line" ] && value=${line#*=}
    while [ "${key% }" != "$key" ]; do key=${key% }; done
    while [ "${value# }" != "$value" ]; do value=${value# }; done
    while [ "${value% }" != "$value" ]; do value=${value% }; done
    case $key in
        action) action=$value ;; plug) plug=$value ;; port) port=$value ;;
        timeout) timeout=$value ;; share) share=$value ;;
    esac
done
fail() { echo "fence_hsp_lab: $*" >&2; exit 1; }
case $action in
    metadata)
        cat <<'XML'
<?xml version="1.0" ?>
<resource-agent name="fence_hsp_lab" shortdesc="Fence agent for the hsp_rdma QEMU lab">
<parameters>
<parameter name="action" unique="0" required="1"><content type="string" default="reboot"/></parameter>
<parameter name="plug" unique="0" required="1"><content type="string"/></parameter>
<parameter name="timeout" unique="0" required="0"><content type="second" default="60"/></parameter>
<parameter name="nodename" unique="0" required="0"><content type="string"/></parameter>
</parameters>
<actions><action name="on"/><action name="off"/><action name="reboot"/><action name="status"/>
<action name="monitor"/><action name="outdate"/><action name="unoutdate"/><action name="metadata"/></actions>
</resource-agent>
XML
        exit 0 ;;
    off | on | reboot | status | monitor | outdate | unoutdate) ;;
    *) fail "unknown action='$action': one of off, on, reboot, status, monitor, outdate, unoutdate, metadata" ;;
esac
[ -n "$plug" ] || plug=$port
[ -n "$plug" ] || fail "no plug= given (the node to fence: a, b, ... any node of the lab)"
case $plug in *[!A-Za-z0-9_-]*) fail "plug='$plug' is not a node name (a, b, ... any node of the lab)" ;; esac
case $timeout in
    '' | . | *[!0-9.]* | *.*.*) fail "timeout='$timeout' is not a number of seconds" ;;
esac
secs=${timeout%%.*} frac=
[ "$secs" != "$timeout" ] && frac=${timeout#*.}
frac="${frac}00"
frac=${frac%"${frac#??}"}  # hundredths of a second
while [ "${secs#0}" != "$secs" ]; do secs=${secs#0}; done
while [ "${frac#0}" != "$frac" ]; do frac=${frac#0}; done
looks=$(( ${secs:-0} * 100 + ${frac:-0} ))
folder=$share/fence
# no program is run on the way (an exec costs ~100-200 ms in a busy TCG guest: its binary and
# libraries come over 9p): the request is written in place and ends with end=1 (the device
# waits for that line), time comes from /proc/uptime, a look is one stat over 9p (~10 ms)
[ -d "$folder" ] || mkdir -p "$folder" 2>/dev/null ||
    fail "cannot ask the lab's fence device through $folder"
read -r host < /proc/sys/kernel/hostname || host=guest
base=$folder/$host-$$-sh
printf 'action=%s\nplug=%s\nreply=kv\nend=1\n' "$action" "$plug" > "$base.req" ||
    fail "cannot ask the lab's fence device through $folder"
hundredths() { read -r up _ < /proc/uptime; now=${up%.*}${up#*.}; }
hundredths
start=$now
while [ ! -e "$base.ans" ]; do
    hundredths
    [ $((now - start)) -ge "$looks" ] && {
        rm -f "$base.req"
        fail "the lab's fence device gave no answer in $timeout s (is the lab's fenced running?)"
    }
    [ $((now - start)) -ge 300 ] && sleep 0.1  # 3 s without an answer: look less often
done
ok= power= detail= noticed= took=
while IFS= read -r line || [ -n "$line" ]; do
    case $line in
        ok=*) ok=${line#ok=} ;; power=*) power=${line#power=} ;; detail=*) detail=${line#detail=} ;;
        noticed_ms=*) noticed=${line#noticed_ms=} ;; took_ms=*) took=${line#took_ms=} ;;
    esac
done < "$base.ans"
rm -f "$base.ans"
echo "fence_hsp_lab: $action $plug: $detail [sh agent: device answered (noticed it after $noticed ms, action $took ms)]"
[ "$ok" = 1 ] || exit 1
case $action in status | monitor) [ "$power" = on ] && exit 0; exit 2 ;; esac
exit 0
