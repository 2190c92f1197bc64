"""Every C file of the build compiles without a warning under clang too.

The test build is gcc's; `make fuzz` builds with clang, whose warnings
differ (-Wmissing-field-initializers on positional initializers, for one),
and -Werror turns each into a broken fuzz build that `make test` would not
see. This re-runs each compile command of the build directory with clang and
-fsyntax-only (no objects, no dependency files), two at a time, and fails
naming every file that warns.

usage: clang_warnings.py BUILD_DIR
"""
import concurrent.futures
import json
import os
import shlex
import shutil
import subprocess
import sys

# gcc-only options clang rejects or warns about, dropped from the commands
GCC_ONLY = ("-fdiagnostics-color=", "-Wno-format-truncation", "-Wformat-truncation", "-fanalyzer")


def clang_args(entry, clang):
    args = entry.get("arguments") or shlex.split(entry["command"])
    out, skip = [clang, "-fsyntax-only"], False
    for a in args[1:]:
        if skip:
            skip = False
            continue
        if a in ("-o", "-MF", "-MQ", "-MT"):
            skip = True
            continue
        if a in ("-c", "-MD", "-MMD") or a.startswith(GCC_ONLY):
            continue
        out.append(a)
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    clang = shutil.which("clang")
    if not clang:
        print("clang_warnings: no clang on PATH (scripts/deps.sh installs it)")
        sys.exit(1)
    build = os.path.abspath(sys.argv[1])
    with open(os.path.join(build, "compile_commands.json")) as f:
        entries = json.load(f)
    seen, jobs = set(), []
    for e in entries:
        src = os.path.normpath(os.path.join(e["directory"], e["file"]))
        if not src.endswith(".c") or src in seen:
            continue
        seen.add(src)
        jobs.append((src, e["directory"], clang_args(e, clang)))
    bad = []

    def run(job):
        src, cwd, args = job
        p = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
        return src, p.returncode, p.stderr

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as ex:
        for src, rc, err in ex.map(run, jobs):
            if rc != 0 or "warning:" in err:
                bad.append((src, err))
    for src, err in bad:
        print("== %s\n%s" % (src, err[-3000:]))
    print("clang_warnings: %d files, %d with warnings or errors" % (len(jobs), len(bad)))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
