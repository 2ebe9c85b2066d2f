// The NCCL loader needs no GPU and no NCCL: a library that is missing, or one
// that lacks NCCL's entry points, gives a message naming each file tried, why
// it failed and how to fix it; MOEJIT_NCCL_LIBRARY replaces the search list.
#include <catch2/catch.hpp>

#include <cstdlib>

#include "ir/error.h"
#include "runtime/cuda/nccl_loader.h"

using namespace moejit;
using namespace moejit::cuda;

TEST_CASE("nccl loader: a missing library gives a message naming what was tried and the fix", "[nccl]") {
  Nccl n;
  std::string error = load_nccl({"/nonexistent/libnccl.so.2", "libnccl_not_here.so"}, n);
  INFO(error);
  CHECK(error.find("NCCL could not be loaded") != std::string::npos);
  CHECK(error.find("/nonexistent/libnccl.so.2: ") != std::string::npos);
  CHECK(error.find("libnccl_not_here.so: ") != std::string::npos);
  CHECK(error.find("MOEJIT_NCCL_LIBRARY") != std::string::npos);
  CHECK(error.find("world_size > 1") != std::string::npos);
  CHECK(n.ncclAllReduce == nullptr);
}

TEST_CASE("nccl loader: a library without NCCL's entry points is refused by name", "[nccl]") {
  Nccl n;
  std::string error = load_nccl({"libm.so.6"}, n);  // opens, but holds no NCCL symbol
  INFO(error);
  CHECK(error.find("libm.so.6: opened, but it lacks ncclGetErrorString") != std::string::npos);
  CHECK(n.library.empty());
}

TEST_CASE("nccl loader: MOEJIT_NCCL_LIBRARY alone is tried when set", "[nccl]") {
  const char* saved = std::getenv("MOEJIT_NCCL_LIBRARY");
  std::string saved_value = saved ? saved : "";
  ::setenv("MOEJIT_NCCL_LIBRARY", "/opt/custom/libnccl.so.2", 1);
  std::vector<std::string> forced = nccl_library_candidates();
  ::unsetenv("MOEJIT_NCCL_LIBRARY");
  std::vector<std::string> usual = nccl_library_candidates();
  if (saved) ::setenv("MOEJIT_NCCL_LIBRARY", saved_value.c_str(), 1);
  CHECK(forced == std::vector<std::string>{"/opt/custom/libnccl.so.2"});
  CHECK(usual == std::vector<std::string>{"libnccl.so.2", "libnccl.so"});
}

TEST_CASE("nccl loader: nccl() throws the loader's message exactly when nccl_available() is false", "[nccl]") {
  std::string why;
  if (nccl_available(&why)) {
    CHECK(why.empty());
    CHECK_FALSE(nccl().library.empty());
    CHECK_NOTHROW(check_nccl(nccl_api::kSuccess, "ncclAllReduce"));
    CHECK_THROWS_WITH(check_nccl(3, "ncclAllReduce"), Catch::Contains("ncclAllReduce: NCCL error 3"));
  } else {
    CHECK(why.find("NCCL could not be loaded") != std::string::npos);
    CHECK_THROWS_WITH(nccl(), why);
    CHECK_THROWS_WITH(check_nccl(3, "ncclAllReduce"), Catch::Contains("ncclAllReduce: NCCL error 3 (no description)"));
  }
}
