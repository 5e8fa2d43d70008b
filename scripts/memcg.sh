# Shared by the scripts (sourced): a memory cgroup of their own, so that the server they
# start runs under the memory limit of a small host (Render's 512 MB) and nothing else on
# the machine counts against it. cgroup v2 (`memory.max`) where the memory controller is
# on the unified hierarchy, else v1 (`memory.limit_in_bytes`). Needs root, or write access
# to the cgroup it is made under.
#
#   memcg_create NAME BYTES || exit 1   # sets memcg_dir and memcg_version
#   sh -c 'echo $$ > "$0/cgroup.procs" && exec "$1"' "$memcg_dir" SERVER &
#   read -r peak oom_kills < <(memcg_stats)
#   memcg_remove                        # once every process in it has exited

memcg_dir= memcg_version=

# The mount point and root of the first hierarchy of type $1 (cgroup or cgroup2) whose
# super options include $2 (any, if empty): "MOUNT_POINT ROOT".
memcg_mount() {
  awk -v type="$1" -v option="$2" '{
    for (i = 7; $i != "-"; i++) {}
    if ($(i + 1) != type) next
    if (option != "" && ("," $(i + 3) ",") !~ ("," option ",")) next
    print $5, $4
    exit
  }' /proc/self/mountinfo
}

# This shell's cgroup on the hierarchy mounted at $1 with root $2, as a directory;
# $3 is the /proc/self/cgroup line's pattern (v1: the memory controller, v2: "0::").
memcg_own() {
  local mount=$1 root=$2 path
  path=$(awk -F: -v pattern="$3" '$0 ~ pattern {print $3; exit}' /proc/self/cgroup)
  [ -n "$path" ] || return 1
  [ "$root" = / ] || path=${path#"$root"}
  echo "$mount${path%/}"
}

memcg_create() {
  local name=$1 bytes=$2 mount root own parent error
  read -r mount root < <(memcg_mount cgroup2 '') || true
  if [ -n "$mount" ] && own=$(memcg_own "$mount" "$root" '^0::') &&
    grep -qw memory "$own/cgroup.controllers" 2>/dev/null; then
    # A v2 cgroup's children have the memory controller only if its subtree_control
    # lists it, and a cgroup with processes of its own (not the root) cannot list it:
    # the nearest ancestor that does is the parent, else this shell's own cgroup if it
    # can be enabled there.
    parent=$own
    while ! grep -qw memory "$parent/cgroup.subtree_control" && [ "$parent" != "$mount" ]; do
      parent=${parent%/*}
    done
    if ! grep -qw memory "$parent/cgroup.subtree_control"; then
      parent=$own
      if ! error=$( (echo +memory > "$own/cgroup.subtree_control") 2>&1); then
        echo "memcg: cgroup v2 is mounted at $mount, but no cgroup from $own up to it lets its" \
          "children have the memory controller, and enabling it in $own failed: ${error##*: }." \
          "Run it as root (systemd enables memory in its slices' cgroup.subtree_control)," \
          "or from a cgroup delegated to you whose cgroup.subtree_control lists memory." >&2
        return 1
      fi
    fi
    memcg_version=2
    memcg_dir=$parent/$name
    memcg_set memory.max "$bytes" || return 1
    [ ! -e "$memcg_dir/memory.swap.max" ] || memcg_set memory.swap.max 0 || return 1
    return 0
  fi
  read -r mount root < <(memcg_mount cgroup memory) || true
  if [ -n "$mount" ] && own=$(memcg_own "$mount" "$root" '^[0-9]+:([^:]*,)?memory(,[^:]*)?:'); then
    memcg_version=1
    memcg_dir=$own/$name
    memcg_set memory.limit_in_bytes "$bytes" || return 1
    # Without swap, as on Render: the limit is on memory and swap together.
    [ ! -e "$memcg_dir/memory.memsw.limit_in_bytes" ] ||
      memcg_set memory.memsw.limit_in_bytes "$bytes" || return 1
    return 0
  fi
  echo "memcg: no memory cgroup controller is mounted (neither cgroup v2 with memory in" \
    "cgroup.controllers nor a v1 memory hierarchy); the soak needs one to hold the server" \
    "to its budget: mount cgroup2 at /sys/fs/cgroup, or v1's memory controller." >&2
  return 1
}

# Makes memcg_dir if it is not there yet and writes $2 to its file $1, checking it took.
memcg_set() {
  local error
  if [ ! -d "$memcg_dir" ] && ! error=$(mkdir "$memcg_dir" 2>&1); then
    echo "memcg: cannot create the cgroup v$memcg_version $memcg_dir: ${error##*: }." \
      "Run as root, or with write access to ${memcg_dir%/*}." >&2
    memcg_dir=
    return 1
  fi
  if ! error=$( (echo "$2" > "$memcg_dir/$1") 2>&1); then
    echo "memcg: cannot set $memcg_dir/$1 to $2: ${error##*: }" >&2
    memcg_remove
    return 1
  fi
}

# "PEAK_BYTES OOM_KILLS" of memcg_dir; "-" for what the kernel does not report (v2's
# memory.peak came in Linux 5.19, v1's oom_kill in 4.13).
memcg_stats() {
  local events=$memcg_dir/memory.oom_control peak=$memcg_dir/memory.max_usage_in_bytes
  if [ "$memcg_version" = 2 ]; then
    events=$memcg_dir/memory.events peak=$memcg_dir/memory.peak
  fi
  printf '%s %s\n' "$(cat "$peak" 2>/dev/null || echo -)" \
    "$(awk '$1 == "oom_kill" {print $2; found = 1} END {if (!found) print "-"}' "$events")"
}

# Removes memcg_dir; the kernel refuses while a process in it has not been reaped.
memcg_remove() {
  [ -n "$memcg_dir" ] || return 0
  for _ in $(seq 50); do
    rmdir "$memcg_dir" 2>/dev/null && { memcg_dir=; return 0; }
    sleep 0.1
  done
  echo "memcg: could not remove $memcg_dir: $(cat "$memcg_dir/cgroup.procs" | wc -l) processes left in it" >&2
  return 1
}
