#include <catch2/catch.hpp>

#include "ir/builder.h"
#include "ir/error.h"
#include "ir/printer.h"
#include "ir/verifier.h"

using namespace moejit;

TEST_CASE("builder infers shapes and rejects bad operands", "[ir]") {
  Graph g("t");
  Builder b(g);
  auto x = b.input("x", {4, 8});
  auto w = b.param("w", {8, 3});
  auto y = b.matmul(x, w);
  CHECK(y.shape() == Shape{4, 3});
  auto bad = b.param("bad", {7, 3});
  try {
    b.matmul(x, bad);
    FAIL("expected an error");
  } catch (const Error& e) {
    std::string msg = e.what();
    CHECK(msg.find("mj.matmul") != std::string::npos);
    CHECK(msg.find("expected contraction dim 8") != std::string::npos);
  }
}

TEST_CASE("dispatch sizes follow capacity and block padding", "[ir][moe]") {
  Graph g("t");
  Builder b(g);
  auto experts = b.input("experts", {10, 2}, DType::i32);
  auto r = b.moe_dispatch(experts, {.num_experts = 4});
  CHECK(r[0].shape() == Shape{20});
  auto padded = b.moe_dispatch(experts, {.num_experts = 4, .block = 4});
  CHECK(padded[0].shape() == Shape{32});  // 20 + 4*3 = 32, a multiple of 4
  auto capped = b.moe_dispatch(experts, {.num_experts = 4, .capacity_factor = 1.0});
  CHECK(capped[0].shape() == Shape{20});  // capacity 5 per expert
}
