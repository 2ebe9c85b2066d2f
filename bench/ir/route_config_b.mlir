// Config B's route alone (16384 tokens of 384 f32, 8 experts, top-2), for
// `moejit tune bench/ir/route_config_b.mlir`: the route family's problem
// without the rest of the training step.
func.func @route_config_b(%x: tensor<16384x384xf32>, %w: tensor<384x8xf32> {mj.role = "param"}) -> (tensor<16384x2xi32> {mj.name = "positions"}) {
  %0:8 = "moe.route"(%x, %w) {block = 1 : i64, capacity_factor = 0.0 : f64, normalize = true, num_experts = 8 : i64, order = "softmax_then_topk", score = "softmax", top_k = 2 : i64} : (tensor<16384x384xf32>, tensor<384x8xf32>) -> (tensor<16384x8xf32>, tensor<16384x2xf32>, tensor<16384x2xi32>, tensor<32768xi32>, tensor<9xi32>, tensor<16384x2xi32>, tensor<8xi32>, tensor<32768x384xf32>)
  return %0#5 : tensor<16384x2xi32>
}
