# lit configuration of moejit's IR text tests (tests/lit/**/*.mlir).
#
# Run through ctest ("lit: IR tests"), which calls lit on the build tree's
# tests/lit; the generated lit.site.cfg.py there sets the paths below and
# loads this file. Substitutions: `moejit` is the built CLI (and `gpt_moe`
# the example's, when built); FileCheck and
# `not` come from LLVM 16's tools (Debian package llvm-16-tools).
import os

import lit.formats

config.name = "moejit"
config.test_format = lit.formats.ShTest(execute_external=False)
config.suffixes = [".mlir", ".test"]
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

# gpt_moe (examples/, MOEJIT_BUILD_EXAMPLES): its CLI tests say REQUIRES: gpt_moe
# and show as UNSUPPORTED, never passed, in a build without the examples.
gpt_moe = os.path.join(config.moejit_binary_dir, "bin", "gpt_moe")
if os.path.exists(gpt_moe):
    tools["gpt_moe"] = gpt_moe
    config.available_features.add("gpt_moe")


# The CUDA backend (codegen/, --emit=cuda): tests that need it say
# REQUIRES: cuda-backend and show as UNSUPPORTED in a MOEJIT_WITH_CUDA=OFF build.
if getattr(config, "moejit_with_cuda", True):
    config.available_features.add("cuda-backend")


def as_command(word):
    """A regex for `word` as a whole token (not part of a path, flag or name)."""
    return r"(?<![\w/.=-])" + word + r"(?![\w/.=-])"


for tool, path in tools.items():
    config.substitutions.append((as_command(tool), path))
