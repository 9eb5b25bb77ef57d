#!/usr/bin/python3
"""Runs one benchmark at a smoke size, the way CI keeps the benchmarks true.

  bench_smoke.py [--timeout S] [--kill-when FILE] -- COMMAND...

Without --kill-when: COMMAND must exit 0 within the timeout and print, as its last line, one JSON
object (the benchmark's figures; only their presence is checked, never their values).
With --kill-when FILE: COMMAND is killed with SIGKILL as soon as FILE exists (a benchmark killed
mid-run, its daemons started).

Either way, every process COMMAND started must be gone within a few seconds of its end: it runs
as the leader of a session of its own, and any process left in that session fails the run (and is
then killed, by PID).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time


def session_members(sid):
    """PIDs of the live processes (zombies aside) in session `sid`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        # state, ppid, pgrp, session
        if fields[0] != "Z" and int(fields[3]) == sid:
            out.append(int(entry))
    return out


def command_line(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--timeout", type=float, default=300, help="seconds the benchmark may take [300]")
    ap.add_argument("--kill-when", help="kill the benchmark with SIGKILL once this file exists")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("no command given")
    name = os.path.basename(cmd[0])
    if args.kill_when and os.path.exists(args.kill_when):
        os.unlink(args.kill_when)

    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if not args.kill_when else subprocess.DEVNULL,
                            start_new_session=True, text=True)
    sid = proc.pid
    failures = []
    output = ""
    try:
        if args.kill_when:
            while not os.path.exists(args.kill_when):
                if proc.poll() is not None:
                    failures.append("%s exited (%d) before %s appeared" % (name, proc.returncode, args.kill_when))
                    break
                if time.monotonic() - started > args.timeout:
                    failures.append("%s did not appear within %.0f s" % (args.kill_when, args.timeout))
                    break
                time.sleep(0.05)
            if proc.poll() is None:
                before = len(session_members(sid))
                print("bench_smoke: %s runs %d process(es); SIGKILL to %s (pid %d)" % (name, before, name, proc.pid))
                proc.kill()
            proc.wait()
        else:
            try:
                output, _ = proc.communicate(timeout=args.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(sid, signal.SIGKILL)
                output, _ = proc.communicate()
                failures.append("%s did not finish within %.0f s" % (name, args.timeout))
            sys.stdout.write(output)
            if proc.returncode != 0 and not failures:
                failures.append("%s exited with status %d" % (name, proc.returncode))
            lines = [l for l in output.splitlines() if l.strip()]
            if not lines:
                failures.append("%s printed nothing" % name)
            else:
                try:
                    if not isinstance(json.loads(lines[-1]), dict):
                        raise ValueError("not an object")
                except ValueError as e:
                    failures.append("%s's last line is not a JSON object (%s): %r" % (name, e, lines[-1][:200]))
        # Whatever it started must die with it.
        deadline = time.monotonic() + 10
        left = session_members(sid)
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = session_members(sid)
        if left:
            failures.append("%d process(es) outlived %s: %s" %
                            (len(left), name, "; ".join("%d: %s" % (p, command_line(p)) for p in left)))
            for p in left:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    finally:
        if proc.poll() is None:
            os.killpg(sid, signal.SIGKILL)
            proc.wait()
    elapsed = time.monotonic() - started
    if failures:
        for f in failures:
            print("bench_smoke: FAILED: " + f)
        return 1
    print("bench_smoke: %s passed in %.1f s, nothing left running" % (name, elapsed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
