// RUN: moejit opt %s --split-input-file --passes=canonicalize | FileCheck %s
// RUN: moejit opt %s --split-input-file --passes=canonicalize --pass-statistics 2>&1 >/dev/null | FileCheck %s --check-prefix=STATS

// Constants fold through a chain: exp(2 * 3 - 2) = exp(4) = 54.598150033144236.
// CHECK-LABEL: func.func @fold_chain(
// CHECK-NEXT:    %[[C:[0-9]+]] = "mj.constant"() {dtype = f64, shape = [2, 3], value = 54.598150033144236 : f64}
// CHECK-NEXT:    %[[Y:[0-9]+]] = "mj.add"(%x, %[[C]])
// CHECK-NEXT:    return %[[Y]]
// STATS:       canonicalize
// STATS-NEXT:    constants-folded 3
func.func @fold_chain(%x: tensor<2x3xf64>) -> (tensor<2x3xf64> {mj.name = "y"}) {
  %0 = "mj.constant"() {dtype = f64, shape = [2, 3], value = 2.0 : f64} : () -> tensor<2x3xf64>
  %1 = "mj.constant"() {dtype = f64, shape = [2, 3], value = 3.0 : f64} : () -> tensor<2x3xf64>
  %2 = "mj.mul"(%0, %1) : (tensor<2x3xf64>, tensor<2x3xf64>) -> tensor<2x3xf64>
  %3 = "mj.sub"(%2, %0) : (tensor<2x3xf64>, tensor<2x3xf64>) -> tensor<2x3xf64>
  %4 = "mj.exp"(%3) : (tensor<2x3xf64>) -> tensor<2x3xf64>
  %5 = "mj.add"(%x, %4) : (tensor<2x3xf64>, tensor<2x3xf64>) -> tensor<2x3xf64>
  return %5 : tensor<2x3xf64>
}

// -----

// Identities vanish; every output then reads %x, and the arguments stay.
// CHECK-LABEL: func.func @identities(%x: tensor<4xf32>, %unused: tensor<2xf32> {mj.role = "param"})
// CHECK-NOT:     "mj.
// CHECK:         return %x, %x, %x, %x, %x, %x : tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>
func.func @identities(%x: tensor<4xf32>, %unused: tensor<2xf32> {mj.role = "param"}) -> (tensor<4xf32> {mj.name = "add0"}, tensor<4xf32> {mj.name = "sub0"}, tensor<4xf32> {mj.name = "mul1"}, tensor<4xf32> {mj.name = "div1"}, tensor<4xf32> {mj.name = "negneg"}, tensor<4xf32> {mj.name = "cast"}) {
  %0 = "mj.constant"() {dtype = f32, shape = [4], value = 0.0 : f64} : () -> tensor<4xf32>
  %1 = "mj.constant"() {dtype = f32, shape = [4], value = 1.0 : f64} : () -> tensor<4xf32>
  %2 = "mj.add"(%0, %x) : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
  %3 = "mj.sub"(%x, %0) : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
  %4 = "mj.mul"(%x, %1) : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
  %5 = "mj.div"(%4, %1) : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
  %6 = "mj.neg"(%x) : (tensor<4xf32>) -> tensor<4xf32>
  %7 = "mj.neg"(%6) : (tensor<4xf32>) -> tensor<4xf32>
  %8 = "mj.cast"(%x) {dtype = f32} : (tensor<4xf32>) -> tensor<4xf32>
  return %2, %3, %4, %5, %7, %8 : tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>
}

// -----

// x * 0 is not 0 for floats (NaN, inf, -0) but is for integers.
// CHECK-LABEL: func.func @mul_zero(
// CHECK:         %[[Z:[0-9]+]] = "mj.constant"() {dtype = f32, shape = [4], value = 0.0 : f64}
// CHECK:         %[[F:[0-9]+]] = "mj.mul"(%xf, %[[Z]])
// CHECK:         %[[I:[0-9]+]] = "mj.constant"() {dtype = i32, shape = [4], value = 0.0 : f64}
// CHECK-NOT:     "mj.mul"
// CHECK:         return %[[F]], %[[I]]
func.func @mul_zero(%xf: tensor<4xf32>, %xi: tensor<4xi32>) -> (tensor<4xf32> {mj.name = "f"}, tensor<4xi32> {mj.name = "i"}) {
  %0 = "mj.constant"() {dtype = f32, shape = [4], value = 0.0 : f64} : () -> tensor<4xf32>
  %1 = "mj.mul"(%xf, %0) : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
  %2 = "mj.constant"() {dtype = i32, shape = [4], value = 0.0 : f64} : () -> tensor<4xi32>
  %3 = "mj.mul"(%xi, %2) : (tensor<4xi32>, tensor<4xi32>) -> tensor<4xi32>
  return %1, %3 : tensor<4xf32>, tensor<4xi32>
}

// -----

// Layout chains collapse: two reshapes into one, transposes compose
// ([1, 0, 2] then [0, 2, 1] is [1, 2, 0]), a reshape back to x's shape and
// transposes that cancel disappear, broadcasts of a constant fold.
// CHECK-LABEL: func.func @layout(
// CHECK-NEXT:    %[[R:[0-9]+]] = "mj.reshape"(%x) {shape = [4, 6]} : (tensor<2x3x4xf32>) -> tensor<4x6xf32>
// CHECK-NEXT:    %[[T:[0-9]+]] = "mj.transpose"(%x) {perm = [1, 2, 0]} : (tensor<2x3x4xf32>) -> tensor<3x4x2xf32>
// CHECK-NEXT:    %[[C:[0-9]+]] = "mj.constant"() {dtype = bf16, shape = [5, 4], value = 0.5 : f64}
// CHECK-NEXT:    return %[[R]], %x, %[[T]], %x, %[[C]] :
func.func @layout(%x: tensor<2x3x4xf32>) -> (tensor<4x6xf32> {mj.name = "rr"}, tensor<2x3x4xf32> {mj.name = "rr_back"}, tensor<3x4x2xf32> {mj.name = "tt"}, tensor<2x3x4xf32> {mj.name = "tt_back"}, tensor<5x4xbf16> {mj.name = "bc"}) {
  %0 = "mj.reshape"(%x) {shape = [6, 4]} : (tensor<2x3x4xf32>) -> tensor<6x4xf32>
  %1 = "mj.reshape"(%0) {shape = [4, -1]} : (tensor<6x4xf32>) -> tensor<4x6xf32>
  %2 = "mj.reshape"(%0) {shape = [2, 3, 4]} : (tensor<6x4xf32>) -> tensor<2x3x4xf32>
  %3 = "mj.transpose"(%x) {perm = [1, 0, 2]} : (tensor<2x3x4xf32>) -> tensor<3x2x4xf32>
  %4 = "mj.transpose"(%3) {perm = [0, 2, 1]} : (tensor<3x2x4xf32>) -> tensor<3x4x2xf32>
  %5 = "mj.transpose"(%x) {perm = [1, 2, 0]} : (tensor<2x3x4xf32>) -> tensor<3x4x2xf32>
  %6 = "mj.transpose"(%5) {perm = [2, 0, 1]} : (tensor<3x4x2xf32>) -> tensor<2x3x4xf32>
  %7 = "mj.constant"() {dtype = bf16, shape = [4], value = 0.5 : f64} : () -> tensor<4xbf16>
  %8 = "mj.broadcast"(%7) {shape = [5, 4]} : (tensor<4xbf16>) -> tensor<5x4xbf16>
  return %1, %2, %4, %6, %8 : tensor<4x6xf32>, tensor<2x3x4xf32>, tensor<3x4x2xf32>, tensor<2x3x4xf32>, tensor<5x4xbf16>
}

// -----

// A constant condition picks its branch; the other branch is dead and goes.
// CHECK-LABEL: func.func @where_constant(
// CHECK-NOT:     "mj.where"
// CHECK-NOT:     "mj.exp"
// CHECK:         %[[T:[0-9]+]] = "mj.tanh"(%a)
// CHECK-NEXT:    return %[[T]]
func.func @where_constant(%a: tensor<3xf32>) -> (tensor<3xf32> {mj.name = "y"}) {
  %0 = "mj.constant"() {dtype = f32, shape = [3], value = 1.0 : f64} : () -> tensor<3xf32>
  %1 = "mj.constant"() {dtype = f32, shape = [3], value = 2.0 : f64} : () -> tensor<3xf32>
  %2 = "mj.compare"(%0, %1) {predicate = "lt"} : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xi1>
  %3 = "mj.tanh"(%a) : (tensor<3xf32>) -> tensor<3xf32>
  %4 = "mj.exp"(%a) : (tensor<3xf32>) -> tensor<3xf32>
  %5 = "mj.where"(%2, %3, %4) : (tensor<3xi1>, tensor<3xf32>, tensor<3xf32>) -> tensor<3xf32>
  return %5 : tensor<3xf32>
}
