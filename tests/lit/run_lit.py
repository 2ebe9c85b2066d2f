#!/usr/bin/env python3
"""Runs lit on the build tree's tests/lit for ctest ("lit: IR tests").

Fails (exit 1) with a message saying what to install when lit or FileCheck
is missing, so a machine without LLVM 16's test tools never passes silently.
usage: run_lit.py LIT_PY LLVM_TOOLS_DIR LIT_BUILD_DIR [lit args...]
"""
import os
import subprocess
import sys


def main() -> int:
    lit_py, tools_dir, build_dir, *extra = sys.argv[1:]
    missing = [p for p in (lit_py, os.path.join(tools_dir, "FileCheck"), os.path.join(tools_dir, "not"))
               if not os.path.exists(p)]
    if missing:
        print("lit: IR tests: FAILED: missing " + ", ".join(missing) +
              "\n  install LLVM 16's test tools: apt-get install llvm-16-tools", file=sys.stderr)
        return 1
    return subprocess.call([sys.executable, lit_py, "-sv", *extra, build_dir])


if __name__ == "__main__":
    sys.exit(main())
