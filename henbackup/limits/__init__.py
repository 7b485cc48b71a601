"""Per-job limits: cgroups (v2 delegated, v1 per controller), nice and ionice, bandwidth.

Only this package touches /sys/fs/cgroup. A job process makes one cgroup leaf for its run
(`place.Placement`), and every program it spawns (restic, command hooks) enters it, with
its nice and ionice, before it execs (see process.set_program_setup): all of their threads
and children are under the limits from their first instruction.
"""
