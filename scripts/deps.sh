# Sourced by the scripts: installs the Debian packages moejit needs, once.
# A second run finds them all and installs nothing. graphviz gives `dot`,
# for `moejit opt --emit=dot` (README). The CUDA Toolkit is not a Debian
# package here: without it at /usr/local/cuda, CMake builds everything but
# the CUDA backend (MOEJIT_WITH_CUDA=OFF) and this says so.
moejit_packages=(cmake ninja-build g++ python3 libfmt-dev catch2 nlohmann-json3-dev libcli11-dev
                 llvm-16-tools mlir-16-tools graphviz)

moejit_install_deps() {
  local missing=()
  for pkg in "${moejit_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    echo "moejit: installing missing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
      || { echo "moejit: apt-get install failed for: ${missing[*]}" >&2; return 1; }
  fi
  if [ ! -f /usr/local/cuda/include/nvrtc.h ]; then
    echo "moejit: note: no CUDA Toolkit at /usr/local/cuda (NVRTC headers): building without the CUDA backend (the CPU backend runs everything)" >&2
  fi
}
