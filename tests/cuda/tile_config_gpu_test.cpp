// GPU tests of the TileConfig road: the SIMT expert matmuls at every tile
// shape moe-tiling can choose (and the adjusted one) against the CPU, with
// uneven and empty expert segments, transpose_w, f32 and bf16, and the
// weight gradient. Without a GPU each test prints "SKIPPED: no CUDA device".
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "cuda/cuda_test_util.h"
#include "ir/builder.h"
#include "runtime/backend.h"
#include "runtime/cuda/cuda_backend.h"

using namespace moejit;

namespace {

struct TileCase {
  std::int64_t tile_m, tile_n, tile_k;
};

// xs [N, D] times w [E, D, F] over segments `offsets` (E + 1 values), with
// the tile attributes set (tile_m = 0: none, the heuristic), and the weight
// gradient of the same segments.
Graph grouped_graph(const TileCase& t, std::int64_t D, std::int64_t F, const std::vector<std::int32_t>& offsets, bool transpose_w,
                    DType dtype) {
  const std::int64_t E = static_cast<std::int64_t>(offsets.size()) - 1, N = offsets.back();
  Graph graph("tiles");
  Builder b(graph);
  Tensor xs = b.input("xs", {N, D}, dtype);
  Tensor w = b.input("w", transpose_w ? Shape{E, F, D} : Shape{E, D, F}, dtype);
  Tensor off = b.input("offsets", {E + 1}, DType::i32);
  Tensor dys = b.input("dys", {N, F}, dtype);
  AttrList attrs;
  attrs.set("transpose_w", transpose_w);
  if (t.tile_m > 0) {
    attrs.set("tile_m", t.tile_m);
    attrs.set("tile_n", t.tile_n);
    attrs.set("tile_k", t.tile_k);
  }
  b.output(b.op1(OpKind::GroupedMatmul, {xs, w, off}, attrs), "ys");
  b.output(b.op1(OpKind::GroupedMatmulWgrad, {xs, dys, off}, {}), "dw");
  return graph;
}

}  // namespace

TEST_CASE("gpu: expert matmuls at every tile shape match the CPU", "[cuda][gpu]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  auto cpu = make_cpu_backend();
  auto cuda = make_cuda_backend();
  // Segments: uneven, one empty, one longer than the largest tile.
  const std::vector<std::int32_t> offsets = {0, 3, 3, 150, 161, 300};
  for (DType dtype : {DType::f32, DType::bf16})
    for (bool transpose_w : {false, true})
      for (TileCase t : {TileCase{0, 0, 0}, TileCase{8, 8, 4}, TileCase{16, 16, 16}, TileCase{32, 128, 16}, TileCase{128, 8, 64},
                         TileCase{64, 128, 32}, TileCase{128, 128, 64}}) {
        INFO(fmt::format("{} transpose_w {} tile {}x{}x{}", dtype_name(dtype), transpose_w, t.tile_m, t.tile_n, t.tile_k));
        Graph graph = grouped_graph(t, 72, 136, offsets, transpose_w, dtype);
        auto args = cuda_test::random_args(graph, 7, 1);
        args["offsets"] = HostTensor::from_ints({static_cast<std::int64_t>(offsets.size())}, offsets);
        std::map<std::string, HostTensor> results[2];
        int i = 0;
        for (Backend* backend : {cpu.get(), cuda.get()}) {
          auto exe = backend->compile(graph);
          for (const auto& [name, value] : args) exe->set(name, value);
          exe->run();
          for (const char* out : {"ys", "dw"}) results[i].emplace(out, exe->get(out));
          ++i;
        }
        for (const char* out : {"ys", "dw"}) {
          double err = cuda_test::normalized_error(results[1].at(out), results[0].at(out));
          INFO(out << ": normalized error " << err);
          CHECK(err <= cuda_test::tolerance(dtype));
        }
      }
}
