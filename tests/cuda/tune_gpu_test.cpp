// `moejit tune` end to end on the GPU: a small graph (a bf16 grouped matmul
// for the sm90 family, an f32 matmul for the SIMT family) tuned by the
// binary into a fresh database, which then holds an entry per problem that
// the families take; and the graph's results with that database and without
// one agree within the dtype's tolerance. Without a GPU: "SKIPPED".
#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>

#include "codegen/tuning_db.h"
#include "codegen/tuning_space.h"
#include "cuda/child_process.h"
#include "cuda/cuda_test_util.h"
#include "ir/builder.h"
#include "ir/file_io.h"
#include "ir/printer.h"
#include "passes/pass_manager.h"

using namespace moejit;

namespace {

// ys = xs w (xs [640, 128], w [4, 128, 192] bf16, uneven segments) and
// c = a b (a [96, 80], b [80, 48] f32).
Graph tiny_graph() {
  Graph g("tiny_tune");
  Builder b(g);
  Tensor xs = b.input("xs", {640, 128}, DType::bf16), w = b.param("w", {4, 128, 192}, DType::bf16);
  Tensor offsets = b.input("offsets", {5}, DType::i32);
  b.output(b.moe_grouped_matmul(xs, w, offsets), "ys");
  Tensor a = b.input("a", {96, 80}), m = b.param("b", {80, 48});
  b.output(b.matmul(a, m), "c");
  return g;
}

std::map<std::string, HostTensor> tiny_inputs(const Graph& g) {
  std::map<std::string, HostTensor> inputs;
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> uniform(-1.0, 1.0);
  for (const auto& arg : g.args()) {
    HostTensor t(g.type(arg.value));
    const std::string& name = g.value(arg.value).name;
    if (name == "offsets") {
      const double bounds[] = {0, 100, 260, 260, 640};  // an empty segment too
      for (int i = 0; i < 5; ++i) t.set(i, bounds[i]);
    } else {
      for (std::int64_t i = 0; i < t.numel(); ++i) t.set(i, uniform(rng));
    }
    inputs.emplace(name, std::move(t));
  }
  return inputs;
}

std::map<std::string, HostTensor> run_on_gpu(const Graph& g, const codegen::TuningDb* db) {
  codegen::ScopedTuningDbOverride only(db);
  auto exe = make_cuda_backend()->compile(g);
  for (const auto& [name, value] : tiny_inputs(g)) exe->set(name, value);
  exe->run();
  return {{"ys", exe->get("ys")}, {"c", exe->get("c")}};
}

}  // namespace

TEST_CASE("moejit tune: tunes a tiny graph end to end and results agree with and without its database", "[cuda][gpu][tuning]") {
  MOEJIT_SKIP_WITHOUT_GPU();
  const auto dir = std::filesystem::temp_directory_path() / fmt::format("moejit_tune_gpu_test_{}", getpid());
  std::filesystem::create_directories(dir);
  struct RemoveAtExit {  // also when a REQUIRE ends the test
    std::filesystem::path path;
    ~RemoveAtExit() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  } remove_dir{dir};
  const Graph graph = tiny_graph();
  write_file_atomically((dir / "tiny.mlir").string(), print_graph(graph));
  const std::string db_path = (dir / "db.json").string();
  // The moejit binary: beside this one (scripts/gpu-check.sh's bundle holds both in one folder), else bin/moejit
  // of the build tree this binary's tests/cuda/ is in (the tree may have moved: the GPU machine runs a copy).
  const auto self = std::filesystem::read_symlink("/proc/self/exe").parent_path();
  auto moejit = self / "moejit";
  if (!std::filesystem::is_regular_file(moejit)) moejit = self.parent_path().parent_path() / "bin" / "moejit";
  INFO(moejit.string());
  REQUIRE(std::filesystem::is_regular_file(moejit));
  const std::string command = fmt::format("'{}' tune '{}' --out '{}' --runs 5 --threads 4 2>&1", moejit.string(),
                                          (dir / "tiny.mlir").string(), db_path);
  std::string output;
  FILE* pipe = ::popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buffer[4096];
  for (std::size_t n; (n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0;) output.append(buffer, n);
  const int status = ::pclose(pipe);
  INFO(output);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  CHECK(output.find("(heuristic)") != std::string::npos);
  CHECK(output.find("wrote " + db_path + ": 2 entries") != std::string::npos);

  const codegen::Target target = cuda_device_target();
  std::string problem;
  auto db = codegen::read_tuning_db(db_path, target, problem);
  INFO(problem);
  REQUIRE(db);
  // One entry per problem of the prepared graph, in its family.
  PassManager manager;
  manager.add_pipeline(kCudaPipeline);
  Graph prepared = graph;
  manager.run(prepared);
  const auto problems = codegen::collect_tuning_problems(prepared, target);
  REQUIRE(problems.size() == 2);
  for (const auto& p : problems) {
    INFO(p.family << " " << p.label());
    auto hit = codegen::lookup_tuned(*db, p.key);
    REQUIRE(hit);
    CHECK(hit->exact);
  }

  const auto with_db = run_on_gpu(graph, &*db);
  const auto without = run_on_gpu(graph, nullptr);
  for (const char* name : {"ys", "c"}) {
    INFO(name);
    CHECK(normalized_error(with_db.at(name), without.at(name)) <= tolerance(with_db.at(name).dtype()));
  }
}
