# lit configuration of moejit's IR text tests (tests/lit/**/*.mlir).
#
# Run through ctest ("lit: IR tests"), which calls lit on the build tree's
# tests/lit; the generated lit.site.cfg.py there sets the paths below and
# loads this file. Substitutions: `moejit` is the built CLI; FileCheck and
# `not` come from LLVM 16's tools (Debian package llvm-16-tools).
import os

import lit.formats

config.name = "moejit"
config.test_format = lit.formats.ShTest(execute_external=False)
config.suffixes = [".mlir"]
config.excludes = ["Inputs", "CMakeLists.txt", "lit.cfg.py", "lit.site.cfg.py.in", "run_lit.py"]
config.test_source_root = os.path.dirname(__file__)
config.test_exec_root = os.path.join(config.moejit_binary_dir, "tests", "lit")

moejit = os.path.join(config.moejit_binary_dir, "bin", "moejit")
if not os.path.exists(moejit):
    lit_config.fatal(f"the moejit CLI was not found at {moejit}: build the target moejit-cli first")

tools = {}
for tool in ("FileCheck", "not"):
    path = os.path.join(config.llvm_tools_dir, tool)
    if not os.path.exists(path):
        lit_config.fatal(
            f"{tool} was not found at {path}: the IR tests need LLVM 16's test tools "
            f"(apt-get install llvm-16-tools)")
    tools[tool] = path
tools["moejit"] = moejit


def as_command(word):
    """A regex for `word` as a whole token (not part of a path, flag or name)."""
    return r"(?<![\w/.=-])" + word + r"(?![\w/.=-])"


for tool, path in tools.items():
    config.substitutions.append((as_command(tool), path))
