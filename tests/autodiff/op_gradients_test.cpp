// Finite-difference gradient checks (f64, CPU backend) of every
// differentiable dense op, driven by the op table: each Diff op of
// ir/ops.def that is not moe.* must have at least one case here, and the
// test fails naming any op that has none. (moe.* ops are checked by the MoE
// tests with the same runtime/gradcheck.h.)
//
// Each case builds a tiny graph y = op(...) with loss = sum(y * probe)
// (probe random), and compares every float argument's analytic gradient with
// a central difference. Inputs stay away from kinks (relu at 0, ties).
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <cmath>
#include <functional>
#include <map>

#include "ir/builder.h"
#include "runtime/gradcheck.h"

using namespace moejit;

namespace {

constexpr DType F = DType::f64;
using Values = std::map<std::string, HostTensor>;

struct OpCase {
  std::string label;
  // Builds the forward graph (ending in probe_loss) and binds any argument
  // that must not be random (ids, positive inputs, inputs off kinks).
  std::function<void(Builder&, Values&)> build;
  double tolerance = 1e-6;
  double step = 0.0;  // 0: gradcheck's default
};

// Random values in [lo, hi) with a random sign: magnitudes away from zero.
HostTensor signed_away_from_zero(const Shape& shape, std::uint64_t seed, double lo = 0.2, double hi = 1.0) {
  HostTensor magnitude = random_tensor({F, shape}, seed, lo, hi);
  HostTensor sign = random_tensor({F, shape}, seed + 100, -1.0, 1.0);
  for (std::int64_t i = 0; i < magnitude.numel(); ++i) magnitude.set(i, sign.get(i) < 0 ? -magnitude.get(i) : magnitude.get(i));
  return magnitude;
}

HostTensor ints(const Shape& shape, std::vector<std::int32_t> values) { return HostTensor::from_ints(shape, values); }

OpCase unary(OpKind kind, double lo = -1.0, double hi = 1.0) {
  return {std::string(op_name(kind)), [=](Builder& b, Values& v) {
            auto x = b.input("x", {3, 4}, F);
            v["x"] = random_tensor(x.type(), 11, lo, hi);
            probe_loss(b, b.op1(kind, {x}));
          }};
}

OpCase binary(OpKind kind) {
  return {std::string(op_name(kind)), [=](Builder& b, Values& v) {
            auto x = b.input("a", {3, 4}, F);
            auto y = b.input("b", {3, 4}, F);
            if (kind == OpKind::Div) v["b"] = signed_away_from_zero({3, 4}, 5, 0.5, 2.0);
            if (kind == OpKind::Maximum || kind == OpKind::Minimum) {
              // b = a + d with |d| >= 0.1: no ties within the step.
              HostTensor a = random_tensor({F, {3, 4}}, 6), d = signed_away_from_zero({3, 4}, 7, 0.1, 0.5);
              HostTensor bb(a.type());
              for (std::int64_t i = 0; i < a.numel(); ++i) bb.set(i, a.get(i) + d.get(i));
              v["a"] = a;
              v["b"] = bb;
            }
            probe_loss(b, b.op1(kind, {x, y}));
          }};
}

std::map<OpKind, std::vector<OpCase>> make_cases() {
  std::map<OpKind, std::vector<OpCase>> cases;
  auto add = [&](OpKind kind, OpCase c) { cases[kind].push_back(std::move(c)); };

  // ---- elementwise ----
  for (auto kind : {OpKind::Neg, OpKind::Exp, OpKind::Tanh, OpKind::Gelu, OpKind::Silu, OpKind::Sigmoid, OpKind::Softplus})
    add(kind, unary(kind, -2.0, 2.0));
  for (auto kind : {OpKind::Log, OpKind::Sqrt, OpKind::Rsqrt}) add(kind, unary(kind, 0.5, 2.0));
  add(OpKind::Relu, {"relu off zero", [](Builder& b, Values& v) {
                       auto x = b.input("x", {3, 4}, F);
                       v["x"] = signed_away_from_zero({3, 4}, 3);
                       probe_loss(b, b.relu(x));
                     }});
  for (auto kind : {OpKind::Add, OpKind::Sub, OpKind::Mul, OpKind::Div, OpKind::Maximum, OpKind::Minimum}) add(kind, binary(kind));
  add(OpKind::Where, {"where(compare(c1, c2), a, b); c1, c2 get zero gradients", [](Builder& b, Values& v) {
                        auto c1 = b.input("c1", {3, 4}, F), c2 = b.input("c2", {3, 4}, F);
                        auto x = b.input("a", {3, 4}, F), y = b.input("b", {3, 4}, F);
                        v["c1"] = signed_away_from_zero({3, 4}, 8);
                        v["c2"] = HostTensor({F, {3, 4}});  // zeros: c1 > c2 is decided far from the step
                        probe_loss(b, b.where(b.compare(c1, c2, "gt"), x, y));
                      }});
  add(OpKind::Cast, {"f64 -> f32 -> f64", [](Builder& b, Values&) {
                       auto x = b.input("x", {3, 4}, F);
                       probe_loss(b, b.cast(b.cast(x, DType::f32), F));
                     },
                     1e-3, 1e-2});
  add(OpKind::Cast, {"f64 -> f64", [](Builder& b, Values&) { probe_loss(b, b.cast(b.input("x", {2, 3}, F), F)); }});

  // ---- reductions and normalizations ----
  for (auto kind : {OpKind::Sum, OpKind::Mean, OpKind::Max}) {
    add(kind, {fmt::format("{} axes [1]", op_name(kind)), [=](Builder& b, Values&) {
                 auto x = b.input("x", {2, 3, 4}, F);
                 probe_loss(b, b.op1(kind, {x}, {{"axes", std::vector<std::int64_t>{1}}, {"keepdims", false}}));
               }});
    add(kind, {fmt::format("{} axes [0, -1] keepdims", op_name(kind)), [=](Builder& b, Values&) {
                 auto x = b.input("x", {2, 3, 4}, F);
                 probe_loss(b, b.op1(kind, {x}, {{"axes", std::vector<std::int64_t>{0, -1}}, {"keepdims", true}}));
               }});
  }
  add(OpKind::Sum, {"sum of everything to a scalar", [](Builder& b, Values&) {
                      probe_loss(b, b.sum(b.input("x", {2, 3}, F), {0, 1}));
                    }});
  add(OpKind::Softmax, {"softmax [3, 5]", [](Builder& b, Values&) { probe_loss(b, b.softmax(b.input("x", {3, 5}, F))); }});
  add(OpKind::LogSoftmax,
      {"log_softmax [2, 2, 5]", [](Builder& b, Values&) { probe_loss(b, b.log_softmax(b.input("x", {2, 2, 5}, F))); }});
  add(OpKind::LayerNorm, {"layer_norm [2, 3, 6]", [](Builder& b, Values&) {
                            auto x = b.input("x", {2, 3, 6}, F);
                            auto g = b.param("gamma", {6}, F), be = b.param("beta", {6}, F);
                            probe_loss(b, b.layer_norm(x, g, be, 1e-5));
                          }});
  add(OpKind::RmsNorm, {"rms_norm [3, 6]", [](Builder& b, Values&) {
                          auto x = b.input("x", {3, 6}, F);
                          probe_loss(b, b.rms_norm(x, b.param("gamma", {6}, F), 1e-5));
                        }});

  // ---- matmul: plain, batched, and batched a with a shared rank-2 b; every transpose ----
  for (int layout = 0; layout < 3; ++layout)
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        Shape batch = layout == 0 ? Shape{} : Shape{2};
        add(OpKind::Matmul, {fmt::format("matmul {} ta={} tb={}", layout == 0 ? "2d" : layout == 1 ? "batched" : "batched a, 2d b", ta, tb),
                             [=](Builder& b, Values&) {
                               const std::int64_t m = 3, k = 4, n = 5;
                               Shape a_shape = batch, b_shape = layout == 1 ? batch : Shape{};
                               a_shape.insert(a_shape.end(), ta ? std::initializer_list<std::int64_t>{k, m} : std::initializer_list<std::int64_t>{m, k});
                               b_shape.insert(b_shape.end(), tb ? std::initializer_list<std::int64_t>{n, k} : std::initializer_list<std::int64_t>{k, n});
                               auto a = b.input("a", a_shape, F);
                               auto w = b.param("w", b_shape, F);
                               probe_loss(b, b.matmul(a, w, ta, tb));
                             }});
      }

  // ---- embedding and layout ----
  add(OpKind::Embedding, {"embedding with repeated ids", [](Builder& b, Values& v) {
                            auto table = b.param("table", {5, 3}, F);
                            auto ids = b.input("ids", {2, 3}, DType::i32);
                            v["ids"] = ints({2, 3}, {4, 0, 2, 2, 4, 1});
                            probe_loss(b, b.embedding(table, ids));
                          }});
  // ---- communication, one rank: the identity, and so its gradient ----
  const AttrList one_rank{{"world_size", std::int64_t{1}}};
  add(OpKind::AllReduce, {"all_reduce world_size 1", [=](Builder& b, Values&) {
                            probe_loss(b, b.op1(OpKind::AllReduce, {b.input("x", {3, 4}, F)}, one_rank));
                          }});
  add(OpKind::AllGather, {"all_gather world_size 1 (backward: reduce_scatter)", [=](Builder& b, Values&) {
                            probe_loss(b, b.op1(OpKind::AllGather, {b.input("x", {3, 4}, F)}, one_rank));
                          }});
  add(OpKind::AllToAll, {"all_to_all world_size 1 (backward: the reverse all_to_all)", [=](Builder& b, Values& v) {
                           Tensor counts = b.input("send_counts", {1}, DType::i32);
                           v["send_counts"] = ints({1}, {2});
                           probe_loss(b, b.op(OpKind::AllToAll, {b.input("x", {3, 4}, F), counts}, one_rank)[0]);
                         }});
  add(OpKind::Reshape, {"reshape [2, 6] -> [3, 4]", [](Builder& b, Values&) {
                          probe_loss(b, b.reshape(b.input("x", {2, 6}, F), {3, 4}));
                        }});
  add(OpKind::Transpose, {"transpose [2, 3, 4] perm [2, 0, 1]", [](Builder& b, Values&) {
                            probe_loss(b, b.transpose(b.input("x", {2, 3, 4}, F), {2, 0, 1}));
                          }});
  add(OpKind::Broadcast, {"broadcast [3, 1] -> [2, 3, 4]", [](Builder& b, Values&) {
                            probe_loss(b, b.broadcast(b.input("x", {3, 1}, F), {2, 3, 4}));
                          }});
  add(OpKind::Broadcast, {"broadcast [4] -> [3, 4]", [](Builder& b, Values&) {
                            probe_loss(b, b.broadcast(b.input("x", {4}, F), {3, 4}));
                          }});
  add(OpKind::Broadcast, {"broadcast [] -> [2, 2]", [](Builder& b, Values&) {
                            probe_loss(b, b.broadcast(b.input("x", {}, F), {2, 2}));
                          }});
  add(OpKind::Slice, {"slice [4, 5] -> [1:3, 0:4]", [](Builder& b, Values&) {
                        probe_loss(b, b.slice(b.input("x", {4, 5}, F), {1, 0}, {3, 4}));
                      }});
  add(OpKind::Pad, {"pad [2, 3] low [1, 0] high [0, 2]", [](Builder& b, Values&) {
                      probe_loss(b, b.pad(b.input("x", {2, 3}, F), {1, 0}, {0, 2}));
                    }});
  add(OpKind::Concat, {"concat of three along axis 1", [](Builder& b, Values&) {
                         auto x = b.input("x", {2, 1}, F), y = b.input("y", {2, 3}, F), z = b.input("z", {2, 2}, F);
                         probe_loss(b, b.concat({x, y, z}, 1));
                       }});
  add(OpKind::Concat, {"concat of x with itself along axis 0", [](Builder& b, Values&) {
                         auto x = b.input("x", {2, 3}, F);
                         probe_loss(b, b.concat({x, x}, -2));
                       }});

  // ---- model-level ops ----
  add(OpKind::Attention, {"causal attention [2, 2, 4, 3]", [](Builder& b, Values&) {
                            auto q = b.input("q", {2, 2, 4, 3}, F), k = b.input("k", {2, 2, 4, 3}, F),
                                 v = b.input("v", {2, 2, 4, 3}, F);
                            probe_loss(b, b.attention(q, k, v));
                          }});
  add(OpKind::Attention, {"causal attention, scale 0.7", [](Builder& b, Values&) {
                            auto q = b.input("q", {1, 1, 3, 2}, F), k = b.input("k", {1, 1, 3, 2}, F),
                                 v = b.input("v", {1, 1, 3, 2}, F);
                            probe_loss(b, b.attention(q, k, v, 0.7));
                          }});
  add(OpKind::AttentionQkv, {"causal attention on a packed qkv [2, 4, 3, 2, 3]", [](Builder& b, Values&) {
                               auto qkv = b.input("qkv", {2, 4, 3, 2, 3}, F);
                               probe_loss(b, b.op(OpKind::AttentionQkv, {qkv}, {{"scale", 0.0}})[0]);
                             }});
  add(OpKind::AttentionQkv, {"packed qkv as the reshaped [B*T, 3D] projection, scale 0.6", [](Builder& b, Values&) {
                               auto x = b.input("x", {5, 12}, F);  // B 1, T 5, H 2, Dh 2
                               auto qkv = b.reshape(x, {1, 5, 3, 2, 2});
                               probe_loss(b, b.op(OpKind::AttentionQkv, {qkv}, {{"scale", 0.6}})[0]);
                             }});
  add(OpKind::CrossEntropy, {"cross_entropy [4, 5]", [](Builder& b, Values& v) {
                               auto logits = b.input("logits", {4, 5}, F);
                               auto targets = b.input("targets", {4}, DType::i32);
                               v["targets"] = ints({4}, {1, 4, 0, 1});
                               probe_loss(b, b.mul(b.cross_entropy(logits, targets), b.constant(1.5, {}, F)));
                             }});
  add(OpKind::Dropout, {"dropout p=0.3", [](Builder& b, Values&) {
                          probe_loss(b, b.dropout(b.input("x", {4, 6}, F), 0.3, 7, 2));
                        }});
  // With a run-time step_offset: the backward must use the mask at offset +
  // step_offset too (the step_offset operand itself has no gradient).
  add(OpKind::Dropout, {"dropout p=0.5 with step_offset", [](Builder& b, Values& v) {
                          Tensor step_offset = b.input("step_offset", {}, DType::i64);
                          HostTensor value(TensorType{DType::i64, {}});
                          value.values<std::int64_t>()[0] = 1'000'003;
                          v["step_offset"] = value;
                          probe_loss(b, b.dropout(b.input("x", {4, 6}, F), 0.5, 7, 2, &step_offset));
                        }});
  return cases;
}

}  // namespace

TEST_CASE("every differentiable dense op has a gradient check case", "[autodiff][gradcheck]") {
  auto cases = make_cases();
  std::vector<std::string> missing;
  for (const OpInfo& info : all_ops()) {
    if (!info.differentiable || info.name.starts_with("moe.")) continue;
    if (!cases.count(info.kind)) missing.push_back(std::string(info.name));
  }
  INFO("Diff ops with no gradient check case: " << fmt::format("{}", fmt::join(missing, ", ")));
  CHECK(missing.empty());
  for (const auto& [kind, list] : cases) CHECK(op_info(kind).differentiable);
}

TEST_CASE("gradients of every differentiable dense op match central differences (f64)", "[autodiff][gradcheck]") {
  int checked = 0;
  for (auto& [kind, list] : make_cases()) {
    for (auto& c : list) {
      Graph g(std::string(op_name(kind)).replace(2, 1, "_"));
      Builder b(g);
      Values values;
      c.build(b, values);
      std::vector<std::string> wrt;
      for (const auto& arg : g.args()) {
        const auto& name = g.value(arg.value).name;
        if (name != "probe" && is_float(g.type(arg.value).dtype)) wrt.push_back(name);
      }
      GradCheckOptions options;
      options.step = c.step;
      GradCheckReport report = check_gradients(g, values, wrt, options);
      INFO(c.label << "\n" << report.str());
      CHECK(report.args.size() == wrt.size());
      CHECK(report.max_rel_error() < c.tolerance);
      for (const auto& entry : report.args)  // a check of all-zero gradients would prove nothing
        if (entry.name != "c1" && entry.name != "c2") CHECK(entry.max_abs_numeric > 1e-3);
      ++checked;
    }
  }
  CHECK(checked >= 40);
}
